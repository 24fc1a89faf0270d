"""Opening the stored trial a fine-tune starts from (kept apart so a shared ``StoredTrial`` can replace it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structsearch.finetune.config import FinetuneError


@dataclass(frozen=True)
class StoredTrial:
    """A trained trial of a structsearch study: the Optuna study, its validated spec, the frozen trial."""

    study: Any
    spec: Any
    frozen: Any
    #: The student's input size the trial was scored at (``None``: the teacher's).
    resolution: int | None


def open_trial(study: str, trial: int, storage_url: str | None) -> StoredTrial:
    """The trained trial ``trial`` of ``study``; one-line :class:`FinetuneError` when it cannot be fine-tuned."""
    from structsearch.search.results import STUDY_MARKER, load_study, record_of
    from structsearch.search.spec import parse_study_spec
    from structsearch.search.storage import open_storage

    s = load_study(study, open_storage(storage_url, create=False))
    raw_spec = s.user_attrs.get(STUDY_MARKER)
    if raw_spec is None:
        raise FinetuneError(f"study '{study}' was not created by structsearch; nothing to fine-tune")
    spec = parse_study_spec(json.loads(raw_spec), f"stored spec of study '{study}'")
    trials = {t.number: t for t in s.get_trials(deepcopy=False)}
    if trial not in trials:
        hint = f"trials 0..{max(trials)}" if trials else "it has no trials yet"
        raise FinetuneError(f"study '{study}' has no trial {trial} ({hint})")
    frozen = trials[trial]
    rec = record_of(study, frozen)
    if not rec.trained or rec.state != "complete" or not frozen.user_attrs.get("spec"):
        raise FinetuneError(
            f"trial {trial} of '{study}' was not trained (over budget, pruned or unfinished); "
            "pick a trained trial (`structsearch pareto --study NAME` lists them)"
        )
    resolution = frozen.user_attrs.get("resolution")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise FinetuneError(f"trial {trial} of '{study}' has an invalid resolution attribute {resolution!r}")
    return StoredTrial(s, spec, frozen, resolution)


def start_student(frozen: Any, plan: Any, teacher: nn.Module, spec: Any) -> tuple[Any, nn.Module, str]:
    """The trial's structure and its starting weights: the proxy-trained artifact when it is on
    this machine, else the structure rebuilt from the spec (inherited teacher weights, or the base
    model's fresh initialisation for a student of another family)."""
    from structsearch.models import create_model
    from structsearch.space import ArchSpec
    from structsearch.surgery import SPEC_FILE, WEIGHTS_FILE, build_student, get_importance, load_student

    arch = ArchSpec.from_dict(frozen.user_attrs["spec"])
    artifact = Path(frozen.user_attrs.get("artifact") or "")
    if frozen.user_attrs.get("artifact") and (artifact / WEIGHTS_FILE).is_file() and (artifact / SPEC_FILE).is_file():
        return arch, load_student(artifact), "artifact"
    torch.manual_seed(spec.seed)  # a from-scratch base is initialised reproducibly
    base = teacher if plan.inherit else create_model(plan.base_model, **plan.base_kwargs).eval()
    student = build_student(base, arch, get_importance(spec.importance, spec.seed))
    return arch, student, "rebuilt"
