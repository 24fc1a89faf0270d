"""Reading results: trial records, Pareto fronts and ``best_under_budget``.

Shared by the CLI (``structsearch best``/``pareto``) and the API, so both give the same answer.
Only *trained* trials count as results: over-budget candidates are recorded with their cost but
never trained, and their score is not a measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from structsearch.cost import Budget, format_count, parse_budget
from structsearch.errors import BudgetError, StructsearchError
from structsearch.search.storage import open_storage

#: Marks an Optuna study as created by structsearch (other studies in the storage are ignored).
STUDY_MARKER = "structsearch_spec"


@dataclass(frozen=True)
class TrialRecord:
    """One scored (or cost-only) candidate, in the units every output uses."""

    study: str
    trial: int
    state: str
    trained: bool
    feasible: bool
    score: float | None
    macs: int | None
    params: int | None
    spec: dict[str, Any] | None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_of(study_name: str, t: FrozenTrial) -> TrialRecord:
    attrs = t.user_attrs
    constraints = t.constraints
    return TrialRecord(
        study=study_name,
        trial=t.number,
        state=t.state.name.lower(),
        trained=bool(attrs.get("trained", False)),
        feasible=all(v <= 0 for v in constraints.values()),
        score=attrs.get("score"),
        macs=attrs.get("macs"),
        params=attrs.get("params"),
        spec=attrs.get("spec"),
        seconds=attrs.get("proxy_seconds"),
    )


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of a study as a record (all states)."""
    return [record_of(study.study_name, t) for t in study.get_trials(deepcopy=False)]


def scored(records: list[TrialRecord]) -> list[TrialRecord]:
    """Completed, trained trials: the ones with a real score."""
    return [r for r in records if r.state == "complete" and r.trained and r.score is not None]


def pareto_front(records: list[TrialRecord], cost: str = "macs") -> list[TrialRecord]:
    """Scored, feasible trials not dominated in (higher score, lower ``cost``), sorted by cost.

    Computed from records rather than ``study.best_trials`` so single- and multi-objective
    studies give the same kind of front.
    """
    pts = [r for r in scored(records) if r.feasible]
    pts.sort(key=lambda r: (getattr(r, cost), -r.score))
    front: list[TrialRecord] = []
    best = float("-inf")
    for r in pts:
        if r.score > best:
            front.append(r)
            best = r.score
    return front


def structsearch_studies(storage: optuna.storages.BaseStorage) -> list[optuna.Study]:
    """The studies in ``storage`` that structsearch created."""
    out = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        if STUDY_MARKER in summary.user_attrs:
            out.append(optuna.load_study(study_name=summary.study_name, storage=storage))
    return out


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
        hint = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies yet"
        raise StructsearchError(f"no study named '{name}'{hint}") from None


def _limit(budget: str | None, what: str, study: optuna.Study) -> int | None:
    if budget is None:
        return None
    b: Budget = parse_budget(budget, what)
    ref = study.user_attrs.get("teacher_macs" if what == "flops" else "teacher_params")
    if b.relative and ref is None:
        raise BudgetError(f"study '{study.study_name}' has no teacher {what} to take {budget} of")
    return b.resolve(int(ref)) if b.relative else int(b.value)


def best_under_budget(
    budget_flops: str | None = None,
    budget_params: str | None = None,
    study: str | None = None,
    storage_url: str | None = None,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    records_of: Callable[[optuna.Study], list[TrialRecord]] | None = None,
) -> TrialRecord:
    """The highest-scoring stored candidate within the budgets (one study, or all of them).

    Raises a one-line error when the storage or study does not exist, or when no candidate fits;
    the latter names the nearest candidate so the user knows how far off the budget is.
    A long-running caller (the API) passes its open ``storage`` and a cached ``records_of``
    instead of opening the storage and reading every trial per call.
    """
    if budget_flops is None and budget_params is None:
        raise BudgetError("give --budget-flops and/or --budget-params, e.g. --budget-flops 300M")
    storage = storage or open_storage(storage_url, create=False)
    records_of = records_of or study_records
    studies = [load_study(study, storage)] if study else structsearch_studies(storage)
    if not studies:
        raise StructsearchError("this storage holds no structsearch studies; run `structsearch search` first")
    fits, all_scored = [], []
    for s in studies:
        max_macs, max_params = _limit(budget_flops, "flops", s), _limit(budget_params, "params", s)
        for r in scored(records_of(s)):
            all_scored.append((r, max_macs, max_params))
            if (max_macs is None or r.macs <= max_macs) and (max_params is None or r.params <= max_params):
                fits.append(r)
    if fits:
        return max(fits, key=lambda r: (r.score, -r.macs))
    if not all_scored:
        raise StructsearchError("no trained candidates stored yet; run or resume a search first")

    def overshoot(item: tuple[TrialRecord, int | None, int | None]) -> float:
        r, mm, mp = item
        return max(r.macs / mm if mm else 0, r.params / mp if mp else 0)

    r, mm, mp = min(all_scored, key=overshoot)
    limits = " and ".join(x for x in (f"{format_count(mm)} MACs" if mm else "", f"{format_count(mp)} params" if mp else "") if x)
    raise BudgetError(
        f"no stored candidate within {limits}; nearest: study {r.study} trial {r.trial} with "
        f"{format_count(r.macs)} MACs, {format_count(r.params)} params, score {r.score:.2f}"
    )
