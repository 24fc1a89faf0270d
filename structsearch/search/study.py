"""Study mechanics: create or resume an Optuna study for a spec, warm-start it, run trials.

* Re-running a spec resumes its study (same name); the study runs until it holds ``trials`` trials
  of its own (warm-start copies do not count).
* A new study starts from earlier trials of the same teacher, student base, data and proxy
  (same :meth:`StudySpec.fingerprint`) in the same storage: their scores stay valid, only the
  constraints are recomputed for the new budget, so a new budget does not retrain known structures.
  The service narrows "earlier studies" to the submitting key's own (``warm_from``).
* The teacher's checkpoint is identified by content, not path: a study run with an earlier version
  of the file is neither resumed nor warm-started from (studies stored before the hash existed can
  still be resumed, but are not warm-started from).
* A new study enqueues its baselines (``spec.baselines``) as its first trials; they are stored
  WAITING, so a study interrupted before running them still runs them when resumed.
* Metric names and per-trial MACs, params, spec and scores are stored on the study, so the Optuna
  dashboard is informative on its own.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from structsearch.errors import StructsearchError
from structsearch.search.context import SearchPlan
from structsearch.search.objective import constraints, objective_values
from structsearch.search.record import TrialAttrs
from structsearch.search.results import STUDY_MARKER, structsearch_studies
from structsearch.search.spec import StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Fields that may change when a spec is re-run on its existing study.
_RESUMABLE_CHANGES = {"trials", "sampler", "warm_start", "prescreen"}


def make_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """TPE by default (constraint-aware through ``trial.set_constraint``), NSGA-II, or random.

    ``seed`` overrides ``spec.seed`` for the sampler only: service workers start a fresh sampler
    per trial, and with the spec's seed every one would replay the same first proposals.
    """
    seed = spec.seed if seed is None else seed
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, spec.trials // 3)))
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # group: baseline trials carry no shape parameters (or only some), and a group-decomposed TPE
    # learns from the trials that have each group instead of dropping to independent sampling;
    # constant_liar: parallel workers do not all propose around the same running trial.
    with warnings.catch_warnings():  # both stable in practice; Optuna still labels them experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(10, max(3, spec.trials // 3)),
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Prune weak trials on intermediate accuracy (single-objective studies only: Optuna cannot
    prune multi-objective ones)."""
    if spec.single_objective:
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, spec.proxy.steps // 4))
    return optuna.pruners.NopPruner()


def directions(spec: StudySpec) -> list[Literal["maximize", "minimize"]]:
    return ["maximize" if o == "accuracy" else "minimize" for o in spec.objectives]


def own_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials this study ran itself (not copied from an earlier study), finished or running."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        and TrialAttrs.read(t).copied_from is None
    ]


def open_study(
    plan: SearchPlan,
    storage: optuna.storages.BaseStorage,
    sampler_seed: int | None = None,
    warm_from: Collection[str] | None = None,
) -> optuna.Study:
    """Create the spec's study, or load it when it exists (then the spec must match).

    ``warm_from``: the only studies a new study may warm-start from (the service passes the
    submitting key's own); None: any study in the storage (the CLI's one-user case).
    """
    spec = plan.spec
    existing = {s.study_name: s for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in existing:
        stored = existing[spec.name].user_attrs.get(STUDY_MARKER)
        if stored is None:
            raise StructsearchError(
                f"study '{spec.name}' exists but was not created by structsearch; choose another name"
            )
        old = StudySpec.model_validate(json.loads(stored)).model_dump()
        new = spec.model_dump()
        changed = sorted(k for k in new if new[k] != old.get(k) and k not in _RESUMABLE_CHANGES)
        if changed:
            raise StructsearchError(
                f"study '{spec.name}' already exists with different {', '.join(changed)}; "
                "give the search a new name (it will start from the earlier trials)"
            )
        ran_with = existing[spec.name].user_attrs.get("teacher_checkpoint")
        if ran_with is not None and ran_with != plan.teacher_checkpoint:
            raise StructsearchError(
                f"study '{spec.name}' was run with another {spec.teacher.checkpoint} (the file changed since); "
                "give the search a new name: its trials were scored against the old teacher"
            )
        if sampler_seed is None:  # a resumed study must not replay the proposals of its first run
            sampler_seed = spec.seed + len(
                storage.get_all_trials(storage.get_study_id_from_name(spec.name), deepcopy=False)
            )
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=make_sampler(spec, sampler_seed), pruner=make_pruner(spec)
        )
        study.set_user_attr("trials_requested", spec.trials)
        return study
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions(spec),
        sampler=make_sampler(spec, sampler_seed),
        pruner=make_pruner(spec),
    )
    with warnings.catch_warnings():  # stable in practice; Optuna still labels it experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(spec.objectives))
    for key, value in plan.study_attrs().items():
        study.set_user_attr(key, value)
    study.set_user_attr(STUDY_MARKER, spec.model_dump_json())
    if spec.warm_start:
        warm_start(study, plan, storage, warm_from)
    for name, params in plan.baseline_trials():  # the study's first trials, enqueued exactly once
        study.enqueue_trial(params, user_attrs=TrialAttrs(baseline=name).attrs())
    return study


def warm_start(
    study: optuna.Study,
    plan: SearchPlan,
    storage: optuna.storages.BaseStorage,
    only: Collection[str] | None = None,
) -> int:
    """Copy finished trials of earlier studies with the same fingerprint (among ``only``, when
    given); returns how many."""
    fp = plan.spec.fingerprint()
    seen: set[str] = set()
    copied = 0
    for other in structsearch_studies(storage):
        if other.study_name == study.study_name or other.user_attrs.get("fingerprint") != fp:
            continue
        if other.user_attrs.get("teacher_checkpoint") != plan.teacher_checkpoint:
            continue  # the same spec, but its checkpoint file held another teacher then
        if only is not None and other.study_name not in only:
            continue
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            rec = TrialAttrs.read(t)
            if rec.spec_key is None or rec.spec_key in seen or not rec.trained or not _measured_alike(rec, plan):
                continue
            seen.add(rec.spec_key)
            study.add_trial(_copy_for(t, rec.update(copied_from=f"{other.study_name}#{t.number}"), plan))
            copied += 1
    return copied


def _measured_alike(a: TrialAttrs, plan: SearchPlan) -> bool:
    """Whether an earlier trial's latency/memory figures can stand in this study.

    Scores carry over between studies of the same fingerprint, but a latency measured with another
    runtime, batch size or on another device is another quantity. Only checked when this study
    uses the figure (a budget or an objective); otherwise the old figures ride along, with the
    device they name.
    """
    m = plan.spec.measure
    objectives = set(plan.spec.objectives)
    if plan.spec.budget.latency is not None or "latency" in objectives:
        if a.latency_ms is None or a.latency_runtime != m.runtime or a.latency_batch_size != m.batch_size:
            return False
        if a.latency_device != _device_here(m.device, m.threads, latency=True):
            return False
    if plan.spec.budget.memory is not None or "memory" in objectives:
        if a.memory_bytes is None or a.memory_batch_size != m.batch_size:
            return False
        if a.memory_device != _device_here(m.device, None, latency=False):
            return False
    return True


def _device_here(device: str, threads: int | None, *, latency: bool) -> str | None:
    """The device name this process would measure on (None where it cannot measure at all)."""
    import torch

    from structsearch.cost.latency import device_name
    from structsearch.devices import DeviceError, resolve_device

    try:
        dev = resolve_device(device)
    except DeviceError:
        return None
    return device_name(dev, (threads or torch.get_num_threads()) if latency and dev.type == "cpu" else None)


def _copy_for(t: FrozenTrial, rec: TrialAttrs, plan: SearchPlan) -> FrozenTrial:
    """A finished trial of another study as this study's trial: its record whole, with the
    constraints and objective values of this study's budgets and objectives."""
    values = objective_values(plan.spec.objectives, rec)
    return optuna.trial.create_trial(
        params=t.params,
        distributions=t.distributions,
        values=[values] if isinstance(values, float) else list(values),
        user_attrs=rec.attrs(),
        system_attrs={f"constraints:{k}": v for k, v in constraints(plan, rec).items()},
    )


def remaining_trials(study: optuna.Study, target: int) -> int:
    return max(0, target - len(own_trials(study)))
