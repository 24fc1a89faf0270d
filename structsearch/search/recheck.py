"""Top-K re-check: does the short proxy rank candidates the way a longer training run does?

A search trusts a few hundred KD steps to order students. That is only worth something if the
order survives longer training, so ``structsearch recheck`` measures it: it retrains the ``K`` best
candidates of the Pareto front plus ``K`` random other feasible trained ones (so the check is not
confined to the front's narrow score range) for ``steps`` steps -- several times the proxy length,
same data, teacher, learning rate and seed -- and reports Kendall's tau between the proxy scores and
the longer scores. Tau near 1: the proxy orders students as longer training does, and its length
suffices; low tau: lengthen ``proxy.steps``.

Results are stored on the study (user attribute :data:`RECHECK_ATTR`, one entry per ``steps``)
after every candidate, so an interrupted re-check resumes where it stopped and the API, the
dashboard and ``structsearch pareto`` all read the same figures.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from structsearch.errors import StructsearchError
from structsearch.search.results import ScoredRecord, TrialRecord, load_study, pareto_front, scored, study_records
from structsearch.search.storage import open_storage

#: Study user attribute holding every re-check of the study: ``{str(steps): RecheckResult dict}``.
RECHECK_ATTR = "recheck"


@dataclass(frozen=True)
class RecheckEntry:
    """One candidate scored twice: by the search's proxy and by the longer run."""

    trial: int
    #: ``front`` (one of the K best on the Pareto front) or ``random`` (a random other feasible one).
    group: str
    macs: int
    proxy_score: float
    long_score: float
    seconds: float


@dataclass(frozen=True)
class RecheckResult:
    """A study's proxy-fidelity figures for one longer run length."""

    study: str
    steps: int
    proxy_steps: int
    top: int
    entries: tuple[RecheckEntry, ...] = field(default=())
    #: Kendall's tau-b between proxy and long scores (``None`` below two candidates or with no spread).
    tau: float | None = None
    tau_p_value: float | None = None
    spearman: float | None = None
    #: Whether the candidate the proxy ranks first is also first after the longer run.
    same_winner: bool | None = None
    #: Every selected candidate has its long score (a stopped re-check leaves this ``False``).
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["entries"] = [asdict(e) for e in self.entries]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecheckResult:
        entries = tuple(RecheckEntry(**e) for e in d.get("entries", ()))
        return cls(**{**d, "entries": entries})


def rank_agreement(proxy: list[float], long: list[float]) -> tuple[float | None, float | None, float | None]:
    """``(kendall_tau_b, its two-sided p-value, spearman_rho)``; ``None`` where undefined."""
    from scipy import stats  # here, not at the top: ``structsearch pareto`` reads re-checks without scipy

    if len(proxy) < 2 or len(set(proxy)) < 2 or len(set(long)) < 2:
        return None, None, None
    tau = stats.kendalltau(proxy, long)
    rho = stats.spearmanr(proxy, long)
    return round(float(tau.statistic), 4), round(float(tau.pvalue), 4), round(float(rho.statistic), 4)


def select_candidates(records: list[TrialRecord], top: int, seed: int = 0) -> list[tuple[ScoredRecord, str]]:
    """The ``top`` best front candidates by score, then ``top`` random other feasible trained ones.

    Copies of one structure (duplicates reuse a score) are taken once, by their first trial.
    """
    if top < 1:
        raise StructsearchError(f"--top must be at least 1, got {top}")
    unique: dict[str, ScoredRecord] = {}
    for r in sorted((r for r in scored(records) if r.feasible), key=lambda r: r.trial):
        unique.setdefault(json.dumps(r.spec, sort_keys=True), r)
    pool = list(unique.values())
    if len(pool) < 2:
        raise StructsearchError(
            f"the study has {len(pool)} feasible trained candidate(s); a re-check needs at least 2 (run more trials)"
        )
    keep = {r.trial for r in pool}
    front = sorted((r for r in pareto_front(records) if r.trial in keep), key=lambda r: -r.score)[:top]
    chosen = {r.trial for r in front}
    rest = [r for r in pool if r.trial not in chosen]
    extra = random.Random(seed).sample(rest, min(top, len(rest)))
    return [(r, "front") for r in front] + [(r, "random") for r in sorted(extra, key=lambda r: r.trial)]


def rechecks_from_attrs(user_attrs: dict[str, Any]) -> list[RecheckResult]:
    """Every re-check in a study's user attributes, shortest run first."""
    raw = user_attrs.get(RECHECK_ATTR) or {}
    return sorted((RecheckResult.from_dict(v) for v in raw.values()), key=lambda r: r.steps)


def _store(study: optuna.Study, result: RecheckResult) -> None:
    raw = dict(study.user_attrs.get(RECHECK_ATTR) or {})
    raw[str(result.steps)] = result.to_dict()
    study.set_user_attr(RECHECK_ATTR, raw)


def _summarise(base: RecheckResult, entries: list[RecheckEntry], total: int) -> RecheckResult:
    tau, p, rho = rank_agreement([e.proxy_score for e in entries], [e.long_score for e in entries])
    same = None
    if entries:
        same = max(entries, key=lambda e: e.proxy_score).trial == max(entries, key=lambda e: e.long_score).trial
    return RecheckResult(
        base.study, base.steps, base.proxy_steps, base.top, tuple(entries), tau, p, rho, same, len(entries) == total
    )


def recheck(
    study_name: str,
    top: int,
    steps: int | None = None,
    storage_url: str | None = None,
    *,
    seed: int = 0,
    device: str | None = None,
    on_entry: Callable[[int, int, RecheckEntry | None], None] | None = None,
) -> RecheckResult:
    """Retrain the selected candidates of ``study_name`` for ``steps`` steps and store the result.

    ``steps`` defaults to four times the study's proxy steps.

    ``on_entry(done, total, entry)`` reports progress (``entry`` is ``None`` before the first one).
    Candidates already re-checked at this length are not trained again.
    """
    # torch and timm load here, not at the top: ``structsearch pareto`` reads stored re-checks
    from structsearch.search.context import build_context, plan_search
    from structsearch.search.stored import StoredTrial, stored_study_spec
    from structsearch.surgery import get_importance

    storage = open_storage(storage_url, create=False)
    study = load_study(study_name, storage)
    spec = stored_study_spec(study_name, study.user_attrs)
    steps = steps or 4 * spec.proxy.steps
    if steps <= spec.proxy.steps:
        raise StructsearchError(
            f"--steps {steps} is not longer than the search's proxy ({spec.proxy.steps} steps); "
            f"use several times that, e.g. --steps {4 * spec.proxy.steps}"
        )
    picks = select_candidates(study_records(study), top, seed)
    previous = {r.steps: r for r in rechecks_from_attrs(study.user_attrs)}.get(steps)
    done = {e.trial: e for e in previous.entries} if previous else {}
    base = RecheckResult(study.study_name, steps, spec.proxy.steps, top)
    entries = [done[r.trial] for r, _ in picks if r.trial in done]
    if on_entry:
        on_entry(len(entries), len(picks), None)
    todo = [(r, g) for r, g in picks if r.trial not in done]
    if todo:
        overrides: dict[str, Any] = {"proxy.steps": steps, "proxy.device": device}
        plan = plan_search(spec.with_overrides(**overrides))
        ctx = build_context(plan)
        importance = get_importance(spec.importance, spec.seed)
        for r, group in todo:
            start = time.perf_counter()
            student = StoredTrial.open(study_name, r.trial, storage).rebuild(ctx.base, importance)
            result = ctx.distiller.score(student, input_size=r.resolution)
            entry = RecheckEntry(
                r.trial,
                group,
                r.macs,
                r.score,
                round(result.val_top1, 3),
                round(time.perf_counter() - start, 2),
            )
            entries.append(entry)
            _store(study, _summarise(base, entries, len(picks)))
            if on_entry:
                on_entry(len(entries), len(picks), entry)
    final = _summarise(base, entries, len(picks))
    _store(study, final)
    return final
