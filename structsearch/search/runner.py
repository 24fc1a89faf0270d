"""Running a search in this process: build the context once, then let Optuna drive trials.

The CLI calls :func:`run_search`; service workers call the same function, so a search behaves the
same wherever it runs. Several processes may run it on one study concurrently (shared RDB
storage): each stops once the study holds the requested number of trials.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from structsearch.errors import TeacherWarning
from structsearch.paths import artifacts_dir
from structsearch.search.context import SearchPlan, build_context, plan_search
from structsearch.search.guard import TrialGuard
from structsearch.search.objective import Objective, TrialStartFn
from structsearch.search.prescreen import run_prescreen
from structsearch.search.results import record_of, scored
from structsearch.search.spec import StudySpec
from structsearch.search.storage import fail_stale_trials, open_storage
from structsearch.search.study import open_study, own_trials, remaining_trials

#: ``on_trial(done, feasible, best_score)`` after every finished trial (progress bars).
ProgressFn = Callable[[int, int, float | None], None]
#: ``on_trial_end(trial)`` after a trial finished, as Optuna stored it (not after one whose
#: objective raised: Optuna re-raises before its callbacks).
TrialEndFn = Callable[[FrozenTrial], None]
#: ``on_teacher(score, warning)``: the teacher's validation score (%) and what is wrong with it, if anything.
TeacherFn = Callable[[float, str | None], None]


class _StopAtTarget:
    """Stop when the study holds ``target`` own trials (counts other workers' trials too)."""

    def __init__(self, target: int, on_trial: ProgressFn | None) -> None:
        self.target = target
        self.on_trial = on_trial

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.on_trial:
            _report(study, self.on_trial)
        if len(own_trials(study)) >= self.target:
            study.stop()


def teacher_warning(plan: SearchPlan, score: float) -> str | None:
    """Why the teacher will not teach, when it classifies the validation data about as well as
    guessing (below 1.5x chance): students distilled from it learn nothing useful (a checkpoint for
    other data or preprocessing, a teacher training that failed), and the search's trials would be
    wasted. None for a teacher well above chance, and for tasks other than classification."""
    classes = plan.base_kwargs.get("num_classes")
    if plan.spec.task != "classification" or not isinstance(classes, int) or classes < 2:
        return None
    chance = 100 / classes
    if score >= 1.5 * chance:
        return None
    return (
        f"the teacher scores {score:.1f}% top-1 on the validation data, about chance ({chance:.0f}% for "
        f"{classes} classes): its students will learn little from it; check its checkpoint, data and "
        "preprocessing (`structsearch eval`), or train it (`structsearch teach`)"
    )


def _warn_teacher(score: float, warning: str | None) -> None:
    """``run_search``'s default ``on_teacher``: the warning as a :class:`TeacherWarning` (the CLI
    prints it as one line)."""
    if warning is not None:
        warnings.warn(warning, TeacherWarning, stacklevel=3)


def _report(study: optuna.Study, on_trial: ProgressFn) -> None:
    """``on_trial(finished own trials, feasible scored trials, best feasible score)`` for ``study`` now."""
    finished = [t for t in own_trials(study) if t.state != TrialState.RUNNING]
    recs = [record_of(study.study_name, t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    feasible = [r for r in scored(recs) if r.feasible]
    on_trial(len(finished), len(feasible), max((r.score for r in feasible), default=None))


def run_search(
    spec: StudySpec,
    storage_url: str | None = None,
    on_trial: ProgressFn | None = None,
    heartbeat_interval: int | None = None,
    max_trials: int | None = None,
    sampler_seed: int | None = None,
    artifacts: Path | None = None,
    guard: TrialGuard | None = None,
    on_trial_start: TrialStartFn | None = None,
    on_trial_end: TrialEndFn | None = None,
    on_plan: Callable[[SearchPlan], None] | None = None,
    on_teacher: TeacherFn = _warn_teacher,
) -> optuna.Study:
    """Validate, create or resume the study, and run trials until it holds ``spec.trials``.

    ``max_trials`` caps how many trials this call runs (a service worker runs one per job);
    ``heartbeat_interval`` turns on Optuna's heartbeats so a killed worker's trial is failed and
    retried by the next worker instead of staying RUNNING forever; ``sampler_seed`` (default: the
    spec's seed) lets each such call propose differently. Trained students are saved under
    ``artifacts`` (default: ``$STRUCTSEARCH_ARTIFACTS``, as the CLI has it; a service worker passes
    its settings' directory, the one the API serves downloads from). ``guard`` stops a trial past its
    deadline or asked to stop (a service worker's per-trial deadline and cancel; see
    :mod:`structsearch.search.guard`). ``on_trial_start`` and ``on_trial_end`` see each trial as it
    starts and after it finished (a service worker writes its read model from them). ``on_plan``
    sees the resolved plan (resolution, budgets) before the teacher's outputs are computed, so a
    progress line can say at once what a long search will run at. ``on_teacher(score, warning)``
    sees the teacher's validation score once per study, when the first run measures it, with
    :func:`teacher_warning`'s message about it (default: warn with a :class:`TeacherWarning`; a
    service worker stores both on its search, where the API shows them).
    """
    plan = plan_search(spec)  # cheap checks first: nothing is stored when they fail
    if on_plan:
        on_plan(plan)
    storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval)
    study = open_study(plan, storage, sampler_seed)
    if heartbeat_interval:
        # a trial of a killed run stopped beating: fail it (the retry callback re-queues its
        # structure) before counting, so it neither blocks nor counts toward ``spec.trials``
        fail_stale_trials(study)
    todo = remaining_trials(study, spec.trials)
    if max_trials is not None:
        todo = min(todo, max_trials)
    if on_trial:  # a resumed study's progress so far
        _report(study, on_trial)
    if todo == 0:
        return study
    ctx = build_context(plan, artifacts if artifacts is not None else artifacts_dir())
    if study.user_attrs.get("teacher_score") is None:
        score = round(ctx.teacher_score, 3)
        study.set_user_attr("teacher_score", score)
        on_teacher(score, teacher_warning(plan, ctx.teacher_score))
    run_prescreen(study, ctx)  # once per study, when spec.prescreen is on
    stopper = _StopAtTarget(spec.trials, on_trial)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [stopper]
    if on_trial_end is not None:
        callbacks.insert(0, lambda _, trial: on_trial_end(trial))
    study.optimize(Objective(ctx, guard, on_trial_start), n_trials=todo, callbacks=callbacks, gc_after_trial=False)
    return study
