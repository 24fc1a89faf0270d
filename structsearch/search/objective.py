"""The Optuna objective: one trial = one candidate structure, costed, maybe trained, scored.

Per trial (DESIGN.md, "One trial, end to end"): the proposal space turns the trial's shape
parameters into an ``ArchSpec`` that fills the budget (a baseline trial takes its fixed structure
instead), plus a ``resolution`` when ``data.resolutions`` is set; the student is built and
costed at its resolution; a candidate within the MACs/params budgets has its latency and peak
activation memory measured (``spec.measure``) and checked against those budgets, all before
training; an over-budget candidate is recorded with its cost and constraints and never trained;
a structure already scored in this study (same spec and resolution) reuses its score; a feasible
new one inherits the teacher's weights and is scored by the short KD proxy at its resolution.

User attributes written per trial (read by :mod:`structsearch.search.results`, the API, the
dashboard): ``spec``, ``spec_key``, ``macs``, ``params``, ``trained``; ``baseline`` (its name, on
the baseline trials ``open_study`` enqueued); ``resolution`` (px, on every
trial when the dimension is on); when measured, ``latency_ms``, ``latency_p90_ms``,
``latency_device``, ``latency_runtime``, ``latency_batch_size``, ``memory_bytes``,
``memory_device``, ``memory_method``, ``memory_batch_size``; after training ``score``,
``teacher_agreement``, ``proxy_seconds``, ``proxy_steps``, ``artifact``; ``target`` (multi-objective
studies: the fraction of the budget the proposal filled). Constraints: ``flops``,
``params``, ``latency``, ``memory`` (each only when its budget is set; <= 0 is feasible).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from torch import nn

from structsearch.cost import CostReport, LatencyReport, MemoryReport, measure_cost
from structsearch.search.baselines import FIXED_BASELINES, baseline_spec
from structsearch.space import ArchSpec
from structsearch.surgery import Importance, build_student_with_recipe, get_importance, save_student

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchContext


def spec_key(spec: ArchSpec, resolution: int | None = None) -> str:
    """Stable identity of a candidate (the same spec always gives the same key).

    With a resolution dimension the candidate is the structure *at* a resolution: the same
    structure at 24 px and at 32 px are different students to train. Without one (``None``) the
    key is the structure's alone, unchanged from studies made before resolutions existed.
    """
    text = spec.to_json() if resolution is None else f"{spec.to_json()}@{int(resolution)}px"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def objective_values(
    objectives: tuple[str, ...],
    score: float,
    macs: int,
    params: int,
    latency_ms: float | None = None,
    memory_bytes: int | None = None,
) -> float | tuple[float, ...]:
    """The trial's values in the order of ``objectives``; an unmeasured latency/memory is ``inf``
    (only possible for a candidate that is infeasible anyway, so it never reaches a front)."""
    figures = {"macs": macs, "params": params, "latency": latency_ms, "memory": memory_bytes}
    values = tuple(
        score if o == "accuracy" else (float("inf") if figures[o] is None else float(figures[o])) for o in objectives
    )
    return values[0] if len(values) == 1 else values


def record_runtime(trial: optuna.Trial, latency: LatencyReport | None, memory: MemoryReport | None) -> None:
    """Store measured latency / memory as user attrs, always with the device that produced them."""
    if latency is not None:
        trial.set_user_attr("latency_ms", round(latency.median_ms, 4))
        trial.set_user_attr("latency_p90_ms", round(latency.p90_ms, 4))
        trial.set_user_attr("latency_device", latency.device)
        trial.set_user_attr("latency_runtime", latency.runtime)
        trial.set_user_attr("latency_batch_size", latency.batch_size)
    if memory is not None:
        trial.set_user_attr("memory_bytes", memory.peak_bytes)
        trial.set_user_attr("memory_device", memory.device)
        trial.set_user_attr("memory_method", memory.method)
        trial.set_user_attr("memory_batch_size", memory.batch_size)


class Objective:
    """Callable for ``study.optimize``; holds the per-process :class:`SearchContext`."""

    def __init__(self, ctx: SearchContext, on_scored: Callable[[int], None] | None = None) -> None:
        self.ctx = ctx
        self.on_scored = on_scored

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        ctx, plan = self.ctx, self.ctx.plan
        resolution = trial.suggest_categorical("resolution", list(plan.resolutions)) if plan.resolutions else None
        spec, student, recipe, cost = self._propose(trial, resolution)
        key = spec_key(spec, resolution)
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("spec_key", key)
        if resolution is not None:
            trial.set_user_attr("resolution", int(resolution))
        trial.set_user_attr("macs", cost.macs)
        trial.set_user_attr("params", cost.params)
        feasible = True
        if plan.max_macs is not None:
            trial.set_constraint("flops", float(cost.macs - plan.max_macs))
            feasible &= cost.macs <= plan.max_macs
        if plan.max_params is not None:
            trial.set_constraint("params", float(cost.params - plan.max_params))
            feasible &= cost.params <= plan.max_params
        objectives = plan.spec.objectives
        # Measured before any training. A candidate over the MACs/params budgets is measured too when
        # the study has a latency/memory budget or objective, so every trial carries the same
        # constraints and objective values; otherwise it is left alone.
        cares = (
            plan.max_latency_ms is not None
            or plan.max_memory_bytes is not None
            or bool({"latency", "memory"} & set(objectives))
        )
        latency = memory = None
        if feasible or cares:
            latency, memory = plan.measure_runtime(student, resolution)
            record_runtime(trial, latency, memory)
        if plan.max_latency_ms is not None and latency is not None:
            trial.set_constraint("latency", float(latency.median_ms - plan.max_latency_ms))
            feasible &= latency.median_ms <= plan.max_latency_ms
        if plan.max_memory_bytes is not None and memory is not None:
            trial.set_constraint("memory", float(memory.peak_bytes - plan.max_memory_bytes))
            feasible &= memory.peak_bytes <= plan.max_memory_bytes
        latency_ms = latency.median_ms if latency is not None else None
        memory_bytes = memory.peak_bytes if memory is not None else None

        def values(score: float) -> float | tuple[float, ...]:
            return objective_values(objectives, score, cost.macs, cost.params, latency_ms, memory_bytes)

        if not feasible:
            trial.set_user_attr("trained", False)
            return values(0.0)

        previous = _scored_before(trial.study, key, trial.number)
        if previous is not None:
            trial.set_user_attr("trained", True)
            trial.set_user_attr("duplicate_of", previous.number)
            for k in ("score", "teacher_agreement", "proxy_seconds", "proxy_steps", "artifact"):
                if k in previous.user_attrs:
                    trial.set_user_attr(k, previous.user_attrs[k])
            return values(previous.user_attrs["score"])

        report = _pruning_reporter(trial) if plan.spec.single_objective else None
        result = ctx.score(student, report, input_size=resolution)
        trial.set_user_attr("trained", True)
        trial.set_user_attr("score", result.val_top1)
        trial.set_user_attr("teacher_agreement", result.teacher_agreement)
        trial.set_user_attr("proxy_seconds", round(result.seconds, 3))
        trial.set_user_attr("proxy_steps", result.steps)
        artifact = ctx.artifact_dir(trial.study.study_name, trial.number)
        save_student(artifact, student, spec, recipe)
        trial.set_user_attr("artifact", str(artifact))
        if self.on_scored:
            self.on_scored(trial.number)
        return values(result.val_top1)

    def _propose(
        self, trial: optuna.Trial, resolution: int | None
    ) -> tuple[ArchSpec, nn.Module, dict[str, Any], CostReport]:
        """The trial's structure, built with inherited weights and measured by fvcore.

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
        name = trial.user_attrs.get("baseline")
        spec = baseline_spec(name, self.ctx.base, proposals) if name in FIXED_BASELINES else None
        if spec is None:
            # baselines fill the budget; a retried trial keeps its stored target (user attrs are copied)
            target = 1.0 if name else trial.user_attrs.get("target", proposals.target_for(trial.number))
            if proposals.vary_target:
                trial.set_user_attr("target", target)
            spec = proposals.propose(proposals.suggest_params(trial), students.measure, target)
        student, recipe, cost = students.get(spec)
        return spec, student, recipe, cost


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


def _scored_before(study: optuna.Study, key: str, number: int, poll_s: float = 1.0) -> optuna.trial.FrozenTrial | None:
    """A finished, trained trial of the same structure, if any (never trains a structure twice).

    Several workers may propose the same structure at once. The trial with the lower number
    trains it; a later one waits for it and reuses its score. If the earlier one fails (its worker
    died), the later one trains the structure itself.
    """
    while True:
        same = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if t.number != number and t.user_attrs.get("spec_key") == key
        ]
        done = [t for t in same if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")]
        if done:
            return done[0]
        if not any(t.state == TrialState.RUNNING and t.number < number for t in same):
            return None
        time.sleep(poll_s)


def _pruning_reporter(trial: optuna.Trial) -> Callable[[int, float], None]:
    """Report intermediate proxy accuracy; raise ``TrialPruned`` when the pruner says so."""

    def report(step: int, top1: float) -> None:
        trial.report(top1, step)
        if trial.should_prune():
            trial.set_user_attr("trained", False)
            raise optuna.TrialPruned(f"pruned at step {step} with top-1 {top1:.2f}")

    return report
