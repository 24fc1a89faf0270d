"""The Optuna objective: one trial = one candidate structure, costed, maybe trained, scored.

Per trial (DESIGN.md, "One trial, end to end"): the space turns the trial's parameters into an
``ArchSpec``; the student is built and costed; an over-budget candidate is recorded with its cost
and constraint and never trained; a structure already scored in this study reuses its score;
a feasible new one inherits the teacher's weights and is scored by the short KD proxy.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.trial import TrialState

from structsearch.cost import measure_cost
from structsearch.space import ArchSpec
from structsearch.surgery import build_student_with_recipe, get_importance, save_student

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchContext


def spec_key(spec: ArchSpec) -> str:
    """Stable identity of a structure (the same spec always gives the same key)."""
    return hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]


def objective_values(objectives: tuple[str, ...], score: float, macs: int, params: int) -> float | tuple[float, ...]:
    values = tuple(score if o == "accuracy" else float(macs if o == "macs" else params) for o in objectives)
    return values[0] if len(values) == 1 else values


class Objective:
    """Callable for ``study.optimize``; holds the per-process :class:`SearchContext`."""

    def __init__(self, ctx: "SearchContext", on_scored: Callable[[int], None] | None = None) -> None:
        self.ctx = ctx
        self.on_scored = on_scored

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        ctx, plan = self.ctx, self.ctx.plan
        spec = plan.space.suggest(trial)
        key = spec_key(spec)
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("spec_key", key)
        student, _recipe = build_student_with_recipe(
            ctx.base, spec, get_importance(plan.spec.importance, plan.spec.seed)
        )
        cost = measure_cost(student, plan.input_size)
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
        if not feasible:
            trial.set_user_attr("trained", False)
            return objective_values(objectives, 0.0, cost.macs, cost.params)

        previous = _scored_before(trial.study, key, trial.number)
        if previous is not None:
            trial.set_user_attr("trained", True)
            trial.set_user_attr("duplicate_of", previous.number)
            for k in ("score", "teacher_agreement", "proxy_seconds", "proxy_steps", "artifact"):
                if k in previous.user_attrs:
                    trial.set_user_attr(k, previous.user_attrs[k])
            return objective_values(objectives, previous.user_attrs["score"], cost.macs, cost.params)

        report = _pruning_reporter(trial) if plan.spec.single_objective else None
        result = ctx.score(student, report)
        trial.set_user_attr("trained", True)
        trial.set_user_attr("score", result.val_top1)
        trial.set_user_attr("teacher_agreement", result.teacher_agreement)
        trial.set_user_attr("proxy_seconds", round(result.seconds, 3))
        trial.set_user_attr("proxy_steps", result.steps)
        artifact = ctx.artifact_dir(trial.study.study_name, trial.number)
        save_student(artifact, student, spec)
        trial.set_user_attr("artifact", str(artifact))
        if self.on_scored:
            self.on_scored(trial.number)
        return objective_values(objectives, result.val_top1, cost.macs, cost.params)


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
