"""Reading results: trial records, Pareto fronts and ``best_under_budget``.

Shared by the CLI (``structsearch best``/``pareto``) and the API, so both give the same answer.
Only *trained* trials count as results: over-budget candidates are recorded with their cost but
never trained, and their score is not a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial
from pydantic import BaseModel, ConfigDict, Field

from structsearch.cost import Budget, format_bytes, format_count, format_ms, parse_budget
from structsearch.errors import BudgetError, NotFound, NothingWithinBudget, StructsearchError
from structsearch.search.record import TrialAttrs
from structsearch.search.storage import open_storage

P = TypeVar("P")

#: Marks an Optuna study as created by structsearch (other studies in the storage are ignored).
STUDY_MARKER = "structsearch_spec"


class TrialRecord(BaseModel):
    """One scored (or cost-only) candidate, in the units every output uses.

    Built from the trial's :class:`~structsearch.search.record.TrialAttrs` by :func:`record_of`;
    the API's ``CandidatePublic`` is this model, so ``structsearch best --format json`` and
    ``GET .../best`` give the same fields.
    """

    model_config = ConfigDict(frozen=True)

    study: str
    trial: int
    state: str
    trained: bool
    feasible: bool
    score: float | None = Field(description="validation top-1 accuracy (%) after the KD proxy")
    map50: float | None = Field(
        default=None, description="detection studies: mAP@.5 (%) beside the score, which is then mAP@[.5:.95] (%)"
    )
    macs: int | None = Field(description="multiply-adds (fvcore: 1 multiply-add = 1 flop)")
    params: int | None
    spec: dict[str, Any] | None = Field(description="the student's ArchSpec")
    seconds: float | None = Field(description="proxy training time")
    resolution: int | None = Field(
        default=None, description="student input resolution in px (searches with data.resolutions)"
    )
    latency_ms: float | None = Field(
        default=None, description="median measured inference latency (ms), on latency_device"
    )
    latency_device: str | None = Field(
        default=None, description="the device latency_ms was measured on, e.g. 'AMD EPYC 7B13 (cpu, 2 threads)'"
    )
    latency_runtime: str | None = Field(default=None, description="torch or onnxruntime")
    memory_bytes: int | None = Field(
        default=None, description="measured peak activation memory of one inference forward (bytes)"
    )
    memory_device: str | None = Field(default=None, description="the device memory_bytes was measured on")
    baseline: str | None = Field(
        default=None,
        description="the baseline this trial scores (uniform, global_magnitude, depth); null: a searched candidate",
    )
    #: Where the result came from; not part of the output (the API's TrialPublic shows them).
    duplicate_of: int | None = Field(default=None, exclude=True)
    copied_from: str | None = Field(default=None, exclude=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def cost(self, axis: str) -> float | None:
        """The figure on a cost axis: ``macs``, ``params``, ``latency`` (ms) or ``memory`` (bytes)."""
        return getattr(self, COST_FIELDS[axis])


class ScoredRecord(TrialRecord):
    """The record of a completed, trained trial (what :func:`scored` keeps): its score is a
    measurement and its MACs and params were counted before it was trained."""

    score: float
    macs: int
    params: int


#: Cost axes of fronts and budgets -> the TrialRecord field holding the figure.
COST_FIELDS: dict[str, str] = {"macs": "macs", "params": "params", "latency": "latency_ms", "memory": "memory_bytes"}
#: Fields a record takes unchanged from the trial's attributes.
_FROM_ATTRS: set[str] = set(TrialRecord.model_fields) & set(TrialAttrs.model_fields) - {"baseline"}


def record_of(study_name: str, t: FrozenTrial) -> TrialRecord:
    """The record of one trial of ``study_name``."""
    a = TrialAttrs.read(t)
    return TrialRecord(
        study=study_name,
        trial=t.number,
        state=t.state.name.lower(),
        feasible=all(v <= 0 for v in t.constraints.values()),
        seconds=a.proxy_seconds,
        # a warm-start copy of another study's baseline is an ordinary result here (another budget)
        baseline=None if a.copied_from else a.baseline,
        **a.model_dump(include=_FROM_ATTRS),
    )


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of a study as a record (all states)."""
    return [record_of(study.study_name, t) for t in study.get_trials(deepcopy=False)]


def scored(records: Sequence[TrialRecord]) -> list[ScoredRecord]:
    """Completed, trained trials: the ones with a real score."""
    return [
        ScoredRecord.model_validate(r, from_attributes=True)
        for r in records
        if r.state == "complete" and r.trained and r.score is not None and r.macs is not None and r.params is not None
    ]


def pareto_front(records: list[TrialRecord], cost: str = "macs") -> list[ScoredRecord]:
    """Scored, feasible trials not dominated in (higher score, lower ``cost``), sorted by cost.

    ``cost`` is ``macs``, ``params``, ``latency`` or ``memory``; trials without a measured figure
    on that axis (measured before the study recorded it, or measurement off) are left out.
    Computed from records rather than ``study.best_trials`` so single- and multi-objective
    studies give the same kind of front.
    """
    if cost not in COST_FIELDS:
        raise StructsearchError(f"unknown cost axis '{cost}'; use one of {', '.join(COST_FIELDS)}")
    pts = [r for r in scored(records) if r.feasible and r.cost(cost) is not None]
    return front_sweep(pts, lambda r: (r.cost(cost), r.score))


def front_sweep(points: Iterable[P], cost_score: Callable[[P], tuple[Any, float]]) -> list[P]:
    """The points not dominated in (lower cost, higher score), cheapest first: sorted by cost,
    then score down (stable: equal points keep their input order), each kept when its score
    beats every cheaper point's. The one front rule, for records here and the service's kept
    fronts (:mod:`structsearch.service.fronts`)."""
    front: list[P] = []
    best = float("-inf")
    for (_, score), p in sorted(((cost_score(p), p) for p in points), key=lambda cp: (cp[0][0], -cp[0][1])):
        if score > best:
            front.append(p)
            best = score
    return front


class BaselineGain(BaseModel):
    """How far the search beat one of its study's baselines.

    ``searched_*`` is the best searched (non-baseline) candidate at equal or lower MACs than the
    baseline; ``gain`` is its score minus the baseline's, in points (None: no searched candidate
    is that cheap yet, or the baseline is not scored yet). The API's ``BaselineGainPublic`` is this model.
    """

    model_config = ConfigDict(frozen=True)

    baseline: str = Field(examples=["global_magnitude"])
    trial: int
    score: float | None
    macs: int | None
    searched_trial: int | None
    searched_score: float | None
    searched_macs: int | None
    gain: float | None = Field(description="searched_score - score in points; null until both are scored")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def baseline_gains(records: list[TrialRecord]) -> list[BaselineGain]:
    """The search's gain over each of its study's own baselines, at equal or lower MACs."""
    searched = [r for r in scored(records) if r.feasible and r.baseline is None]
    out = []
    for b in sorted(records, key=lambda r: r.trial):
        if b.baseline is None:
            continue
        rival, gain = None, None
        if b.state == "complete" and b.trained and b.score is not None and b.macs is not None:
            cheaper = (r for r in searched if r.macs <= b.macs)
            rival = max(cheaper, key=lambda r: (r.score, -r.macs), default=None)
            gain = None if rival is None else round(rival.score - b.score, 3)
        out.append(
            BaselineGain(
                baseline=b.baseline,
                trial=b.trial,
                score=b.score,
                macs=b.macs,
                searched_trial=rival.trial if rival else None,
                searched_score=rival.score if rival else None,
                searched_macs=rival.macs if rival else None,
                gain=gain,
            )
        )
    return out


def gain_summary(g: BaselineGain) -> str:
    """One short line for a terminal: ``global_magnitude (t1: 85.20% at 62.1M): +1.35 by t17 (86.55% at 61.8M)``."""
    head = f"{g.baseline} (t{g.trial}"
    if g.score is None or g.macs is None:
        return f"{head}): not scored yet"
    head += f": {g.score:.2f}% at {format_count(g.macs)})"
    if g.gain is None or g.searched_macs is None:
        return f"{head}: no searched candidate at equal or lower MACs yet"
    return f"{head}: {g.gain:+.2f} by t{g.searched_trial} ({g.searched_score:.2f}% at {format_count(g.searched_macs)})"


def structsearch_studies(storage: optuna.storages.BaseStorage) -> list[optuna.Study]:
    """The studies in ``storage`` that structsearch created."""
    summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    return [
        optuna.load_study(study_name=s.study_name, storage=storage) for s in summaries if STUDY_MARKER in s.user_attrs
    ]


def study_task(user_attrs: dict[str, Any]) -> str:
    """A structsearch study's ``task`` (``classification`` or ``detection``), read from its stored spec.

    What its score means: validation top-1 (%), or for detection mAP@[.5:.95] (%) with each
    trial's mAP@.5 in its ``map50`` attribute. Studies stored before tasks existed are classification.
    """
    raw = user_attrs.get(STUDY_MARKER)
    return str(json.loads(raw).get("task", "classification")) if raw else "classification"


def _no_study(name: str, storage: optuna.storages.BaseStorage) -> StructsearchError:
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    hint = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies yet"
    return NotFound(f"no study named '{name}'{hint}")


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise _no_study(name, storage) from None


def study_id(name: str, storage: optuna.storages.BaseStorage) -> int:
    """The storage's id of study ``name`` (a one-line error naming the studies there when absent)."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        raise _no_study(name, storage) from None


#: Budget kind -> (study attr with the teacher's figure, record field compared, label for messages).
BUDGETS: dict[str, tuple[str, str, str]] = {
    "flops": ("teacher_macs", "macs", "MACs"),
    "params": ("teacher_params", "params", "params"),
    "latency": ("teacher_latency_ms", "latency_ms", "latency"),
    "memory": ("teacher_memory_bytes", "memory_bytes", "memory"),
}


def budget_limit(budget: str | None, what: str, study: optuna.Study) -> float | None:
    """The limit a budget text sets on its kind's figure (``"60%"`` of the study's teacher, or an
    absolute figure); None for no budget."""
    if budget is None:
        return None
    b: Budget = parse_budget(budget, what)
    if not b.relative:
        return b.value if what == "latency" else int(b.value)
    ref = study.user_attrs.get(BUDGETS[what][0])
    if ref is None:
        hint = (
            " (the teacher is measured only for a percentage budget in the spec; give an absolute budget)"
            if what in ("latency", "memory")
            else ""
        )
        raise BudgetError(f"study '{study.study_name}' has no teacher {what} to take {budget} of{hint}")
    return b.resolve(float(ref))


def _fmt_figure(what: str, value: float) -> str:
    """A budget-kind figure for messages: ``1.2M MACs``, ``5ms``, ``12.5MB``."""
    if what == "latency":
        return format_ms(value)
    if what == "memory":
        return format_bytes(value)
    return f"{format_count(value)} {BUDGETS[what][2]}"


def check_budgets(texts: dict[str, str | None], none_given: str) -> None:
    """Refuse (:class:`BudgetError`) a malformed budget text, or none at all (with ``none_given``)."""
    if all(t is None for t in texts.values()):
        raise BudgetError(none_given)
    for what, text in texts.items():
        if text is not None:
            parse_budget(text, what)


def best_under_budget(
    budget_flops: str | None = None,
    budget_params: str | None = None,
    study: str | None = None,
    storage_url: str | None = None,
    *,
    budget_latency: str | None = None,
    budget_memory: str | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    records_of: Callable[[optuna.Study], Sequence[TrialRecord]] | None = None,
) -> TrialRecord:
    """The highest-scoring stored candidate within the budgets (one study, or all of them).

    Latency (``5ms``) and memory (``50MB``) budgets are read against each trial's measured figure;
    a trial without one (not measured) cannot be shown to fit and is passed over. The record names
    the device each figure was measured on. Percentages resolve against the teacher's figures
    stored with each study.

    Raises a one-line error when the storage or study does not exist, or when no candidate fits;
    the latter names the nearest candidate so the user knows how far off the budget is.
    A long-running caller (the API) passes its open ``storage`` and a cached ``records_of``
    instead of opening the storage and reading every trial per call.
    """
    texts = {"flops": budget_flops, "params": budget_params, "latency": budget_latency, "memory": budget_memory}
    check_budgets(  # before any storage is opened
        texts, "give --budget-flops, --budget-params, --budget-latency and/or --budget-memory, e.g. --budget-flops 300M"
    )
    storage = storage or open_storage(storage_url, create=False)
    records_of = records_of or study_records
    studies = [load_study(study, storage)] if study else structsearch_studies(storage)
    if not studies:
        raise NotFound("this storage holds no structsearch studies; run `structsearch search` first")
    fits: list[ScoredRecord] = []
    all_scored: list[tuple[ScoredRecord, dict[str, float]]] = []
    for s in studies:
        limits = {what: lim for what, text in texts.items() if (lim := budget_limit(text, what, s)) is not None}
        for r in scored(records_of(s)):
            all_scored.append((r, limits))
            if all(_within(r, what, lim) for what, lim in limits.items()):
                fits.append(r)
    if fits:
        return max(fits, key=lambda r: (r.score, -r.macs))
    if not all_scored:
        raise NotFound("no trained candidates stored yet; run or resume a search first")

    def overshoot(item: tuple[ScoredRecord, dict[str, float]]) -> float:
        r, limits = item
        ratios = []
        for what, lim in limits.items():
            value = getattr(r, BUDGETS[what][1])
            ratios.append(float("inf") if value is None else value / lim)
        return max(ratios, default=0.0)

    r, limits = min(all_scored, key=overshoot)
    wanted = " and ".join(_fmt_figure(what, lim) for what, lim in limits.items())
    figures = [f"{format_count(r.macs)} MACs", f"{format_count(r.params)} params"]
    if "latency" in limits:
        figures.append(
            "latency not measured" if r.latency_ms is None else f"{format_ms(r.latency_ms)} on {r.latency_device}"
        )
    if "memory" in limits:
        figures.append(
            "memory not measured" if r.memory_bytes is None else f"{format_bytes(r.memory_bytes)} peak activations"
        )
    raise NothingWithinBudget(
        f"no stored candidate within {wanted}; nearest: study {r.study} trial {r.trial} with "
        f"{', '.join(figures)}, score {r.score:.2f}"
    )


def _within(r: TrialRecord, what: str, limit: float) -> bool:
    """Whether a record's figure meets a budget; an unmeasured figure does not."""
    value = getattr(r, BUDGETS[what][1])
    return value is not None and value <= limit
