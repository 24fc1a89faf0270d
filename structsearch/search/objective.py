"""The Optuna objective: one trial = one candidate structure, costed, maybe trained, scored.

Per trial (DESIGN.md, "One trial, end to end"): the proposal space turns the trial's shape
parameters into an ``ArchSpec`` that fills the budget (a baseline trial takes its fixed structure
instead), plus a ``resolution`` when ``data.resolutions`` is set; the student is built and
costed at its resolution; a candidate within the MACs/params budgets has its latency and peak
activation memory measured (``spec.measure``) and checked against those budgets, all before
training; an over-budget candidate is recorded with its cost and constraints and never trained;
a structure already scored in this study (same spec and resolution) reuses its score; a feasible
new one inherits the teacher's weights and is scored by the short KD proxy at its resolution.

The trial's user attributes are one :class:`~structsearch.search.record.TrialAttrs`: the proposal
(``spec``, ``spec_key``, ``resolution``, ``macs``, ``params``, ``target``) is stored before any
measurement, latency / memory when measured, the proxy's result and ``artifact`` (the student's
weights, spec and surgery recipe) after training; a duplicate stores its original's record.
Constraints: ``flops``, ``params``, ``latency``, ``memory`` (each only when its budget is set and
its figure measured; <= 0 is feasible).

A trial that raises is marked with :data:`FAILURE_ATTR` before Optuna fails it, so the service can
count failed trials in a row (:mod:`structsearch.service.faults`). An optional
:class:`~structsearch.search.guard.TrialGuard` stops a trial past its deadline or asked to stop, at
the next training step or between phases.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from torch import nn

from structsearch.cost import CostReport, measure_cost
from structsearch.search.baselines import FIXED_BASELINES, baseline_spec
from structsearch.search.guard import TrialGuard, TrialInterrupted
from structsearch.search.record import FAILURE_ATTR, TrialAttrs
from structsearch.search.storage import fail_stale_trials
from structsearch.space import ArchSpec
from structsearch.surgery import Importance, build_student_with_recipe, get_importance, save_student

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchContext, SearchPlan

#: ``on_start(trial)`` as each trial begins (after its guard started), before any work.
TrialStartFn = Callable[[optuna.Trial], None]


def failure_of(error: BaseException) -> str:
    """What :data:`FAILURE_ATTR` stores for ``error`` (safe to show to users)."""
    return str(error) if isinstance(error, TrialInterrupted) else type(error).__name__


def spec_key(spec: ArchSpec, resolution: int | None = None) -> str:
    """Stable identity of a candidate (the same spec always gives the same key).

    With a resolution dimension the candidate is the structure *at* a resolution: the same
    structure at 24 px and at 32 px are different students to train. Without one (``None``) the
    key is the structure's alone, unchanged from studies made before resolutions existed.
    """
    text = spec.to_json() if resolution is None else f"{spec.to_json()}@{int(resolution)}px"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def objective_values(objectives: tuple[str, ...], rec: TrialAttrs) -> float | tuple[float, ...]:
    """The trial's values in the order of ``objectives``: the score of a trained trial (else 0), its
    cost figures; an unmeasured latency/memory is ``inf`` (only possible for a candidate that is
    infeasible anyway, so it never reaches a front)."""
    figures = {
        "accuracy": rec.score if rec.trained and rec.score is not None else 0.0,
        "macs": rec.macs,
        "params": rec.params,
        "latency": rec.latency_ms,
        "memory": rec.memory_bytes,
    }
    values = tuple(float("inf") if (v := figures[o]) is None else float(v) for o in objectives)
    return values[0] if len(values) == 1 else values


def constraints(plan: SearchPlan, rec: TrialAttrs) -> dict[str, float]:
    """The trial's constraints under ``plan``'s budgets (<= 0 is feasible); a budget whose figure
    the record lacks (not measured) is left out."""
    limits = {
        "flops": (rec.macs, plan.max_macs),
        "params": (rec.params, plan.max_params),
        "latency": (rec.latency_ms, plan.max_latency_ms),
        "memory": (rec.memory_bytes, plan.max_memory_bytes),
    }
    return {k: float(v - lim) for k, (v, lim) in limits.items() if v is not None and lim is not None}


class Objective:
    """Callable for ``study.optimize``; holds the per-process :class:`SearchContext`."""

    def __init__(
        self, ctx: SearchContext, guard: TrialGuard | None = None, on_start: TrialStartFn | None = None
    ) -> None:
        self.ctx = ctx
        self.guard = guard
        self.on_start = on_start

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        if self.guard is not None:
            self.guard.start(trial.number)
        if self.on_start is not None:
            self.on_start(trial)
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            try:
                trial.set_user_attr(FAILURE_ATTR, failure_of(e))
            except Exception:  # noqa: BLE001 - storage down: the trial goes stale and is retried
                pass
            raise

    def _check(self) -> None:
        if self.guard is not None:
            self.guard.check()

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        ctx, plan = self.ctx, self.ctx.plan
        objectives = plan.spec.objectives
        resolution = trial.suggest_categorical("resolution", list(plan.resolutions)) if plan.resolutions else None
        rec, spec, student, recipe = self._propose(trial, TrialAttrs.read(trial), resolution)
        rec.write(trial)
        self._check()
        feasible = all(v <= 0 for v in constraints(plan, rec).values())
        # Measured before any training. A candidate over the MACs/params budgets is measured too when
        # the study has a latency/memory budget or objective, so every trial carries the same
        # constraints and objective values; otherwise it is left alone.
        cares = (
            plan.max_latency_ms is not None
            or plan.max_memory_bytes is not None
            or bool({"latency", "memory"} & set(objectives))
        )
        if feasible or cares:
            rec = rec.with_runtime(*plan.measure_runtime(student, resolution))
            rec.write(trial)
        for key, value in constraints(plan, rec).items():  # Optuna keeps the first value set: set once
            trial.set_constraint(key, value)
            feasible &= value <= 0
        check = self.guard.check if self.guard is not None else None
        if not feasible:
            rec = rec.update(trained=False)
        elif (previous := _scored_before(trial.study, spec_key(spec, resolution), trial.number, check)) is not None:
            rec = rec.duplicate(*previous)
        else:
            self._check()
            report = _pruning_reporter(trial) if plan.spec.single_objective else None
            result = ctx.distiller.score(student, report, input_size=resolution, check=check)
            self._check()
            artifact = ctx.artifact_dir(trial.study.study_name, trial.number)
            save_student(artifact, student, spec, recipe)
            rec = rec.update(
                trained=True,
                score=result.val_top1,
                teacher_agreement=result.teacher_agreement,
                map50=getattr(result, "map50", None),  # detection proxies only
                proxy_seconds=round(result.seconds, 3),
                proxy_steps=result.steps,
                artifact=str(artifact),
            )
        rec.write(trial)
        return objective_values(objectives, rec)

    def _propose(
        self, trial: optuna.Trial, rec: TrialAttrs, resolution: int | None
    ) -> tuple[TrialAttrs, ArchSpec, nn.Module, dict[str, Any]]:
        """The trial's structure, built with inherited weights and measured by fvcore: its record
        (proposal and cost), spec, student and surgery recipe.

        A search trial realises its shape parameters at the budget (:mod:`~structsearch.search.proposal`);
        a ``global_magnitude`` or ``depth`` baseline trial (enqueued by ``open_study``) takes its
        fixed structure from the teacher's weights instead. Every structure tried while aiming is
        built and counted once; the last one is the student.
        """
        plan = self.ctx.plan
        proposals = plan.proposals(resolution)
        students = Students(
            self.ctx.base, get_importance(plan.spec.importance, plan.spec.seed), plan.student_input_size(resolution)
        )
        spec = baseline_spec(rec.baseline, self.ctx.base, proposals) if rec.baseline in FIXED_BASELINES else None
        if spec is None:
            # baselines fill the budget; a retried trial keeps its stored target (user attrs are copied)
            target = (
                1.0 if rec.baseline else rec.target if rec.target is not None else proposals.target_for(trial.number)
            )
            if proposals.vary_target:
                rec = rec.update(target=target)
            spec = proposals.propose(proposals.suggest_params(trial), students.measure, target)
        student, recipe, cost = students.get(spec)
        rec = rec.update(
            spec=spec.to_dict(),
            spec_key=spec_key(spec, resolution),
            resolution=resolution,
            macs=cost.macs,
            params=cost.params,
        )
        return rec, spec, student, recipe


class Students:
    """Students built from one base and counted by fvcore, each once (proposals may try several)."""

    def __init__(self, base: nn.Module, importance: Importance, input_size: tuple[int, int, int]) -> None:
        self.base, self.importance, self.input_size = base, importance, input_size
        self._built: dict[ArchSpec, tuple[nn.Module, dict[str, Any], CostReport]] = {}

    def get(self, spec: ArchSpec) -> tuple[nn.Module, dict[str, Any], CostReport]:
        """``(student with inherited weights, recipe, cost)``."""
        if spec not in self._built:
            student, recipe = build_student_with_recipe(self.base, spec, self.importance)
            self._built[spec] = (student, recipe, measure_cost(student, self.input_size))
        return self._built[spec]

    def measure(self, spec: ArchSpec) -> tuple[int, int]:
        """``(macs, params)``: the measurement :meth:`ProposalSpace.propose` checks its aim with."""
        cost = self.get(spec)[2]
        return cost.macs, cost.params


def _scored_before(
    study: optuna.Study,
    key: str,
    number: int,
    check: Callable[[], None] | None = None,
    poll_s: float = 1.0,
    max_wait_s: float = 3600.0,
) -> tuple[TrialAttrs, int] | None:
    """``(record, number)`` of a finished, trained trial of the same structure, if any (never trains
    a structure twice).

    Several workers may propose the same structure at once. The trial with the lower number
    trains it; a later one waits for it and reuses its result. If the earlier one fails (its worker
    died: stale trials are failed while waiting), the later one trains the structure itself.

    The study is read once; while waiting, only the earlier trials waited for are re-read. The wait
    is bounded: ``check()`` (the trial's guard: deadline, stop request) runs at every look, and after
    ``max_wait_s`` the later trial trains the structure itself rather than wait on.
    """
    same = [
        (t, rec)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if t.number != number and (rec := TrialAttrs.read(t)).spec_key == key
    ]
    done = [(rec, t.number) for t, rec in same if t.state == TrialState.COMPLETE and rec.trained]
    if done:
        return done[0]
    waiting_on = [t._trial_id for t, _ in same if t.state == TrialState.RUNNING and t.number < number]
    give_up = time.monotonic() + max_wait_s
    while waiting_on and time.monotonic() < give_up:
        time.sleep(poll_s)
        if check is not None:
            check()
        fail_stale_trials(study)
        running = []
        for trial_id in waiting_on:
            t = study._storage.get_trial(trial_id)
            if t.state == TrialState.COMPLETE and (rec := TrialAttrs.read(t)).trained:
                return rec, t.number
            if t.state == TrialState.RUNNING:
                running.append(trial_id)
        waiting_on = running
    return None


def _pruning_reporter(trial: optuna.Trial) -> Callable[[int, float], None]:
    """Report intermediate proxy accuracy; raise ``TrialPruned`` when the pruner says so."""

    def report(step: int, top1: float) -> None:
        trial.report(top1, step)
        if trial.should_prune():
            TrialAttrs(trained=False).write(trial)
            raise optuna.TrialPruned(f"pruned at step {step} with top-1 {top1:.2f}")

    return report
