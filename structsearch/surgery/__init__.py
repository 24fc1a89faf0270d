"""Students that are physically smaller than the teacher and inherit its weights.

``build_student(teacher, spec)`` copies the teacher and lets the family adapter shrink the copy in
place: dropped blocks are removed from their stage, narrowed layers keep the most important
channels / heads (L1 magnitude by default), everything else keeps the teacher's weights unchanged.
The identity spec therefore reproduces the teacher exactly.

A student is saved as its weights plus its spec; loading builds the base architecture from the
spec (random weights, no teacher needed), applies the same structure, and loads the weights.
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structsearch.errors import CheckpointError, one_line
from structsearch.pruning.importance import Importance, L1Magnitude, RandomImportance, get_importance
from structsearch.space import ArchSpec, family_for, space_of

__all__ = [
    "build_student",
    "build_student_with_recipe",
    "save_student",
    "load_student",
    "Importance",
    "L1Magnitude",
    "RandomImportance",
    "get_importance",
]

WEIGHTS_FILE = "student.pt"
SPEC_FILE = "spec.json"
RECIPE_FILE = "recipe.json"


def build_student_with_recipe(
    teacher: nn.Module, spec: ArchSpec, importance: Importance | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The student for ``spec`` with weights inherited from ``teacher``, and its recipe."""
    family = family_for(teacher)
    space_of(teacher, spec.model, spec.kwargs).validate(spec)
    student = copy.deepcopy(teacher)
    recipe = family.shrink(student, spec, importance or L1Magnitude())
    recipe = {"family": family.name, "importance": (importance or L1Magnitude()).name, **recipe}
    return student, recipe


def build_student(teacher: nn.Module, spec: ArchSpec, importance: Importance | None = None) -> nn.Module:
    """The student for ``spec`` (see :func:`build_student_with_recipe`)."""
    return build_student_with_recipe(teacher, spec, importance)[0]


def save_student(
    directory: str | Path, student: nn.Module, spec: ArchSpec, recipe: dict[str, Any] | None = None
) -> Path:
    """Write ``student.pt`` (state dict), ``spec.json`` and, when given, ``recipe.json`` to ``directory``.

    Atomically: the files go to a hidden sibling folder (``.NAME.<random>.partial``) that is renamed
    to ``directory`` once complete, so a save that fails or is killed (an exception, a full disk,
    ``kill -9``) never leaves a half-written student where readers look; a failed save removes its
    partial folder, a killed one leaves it hidden beside the target. An existing ``directory`` is
    replaced whole. (Renames are atomic against other processes, not against power loss: nothing
    is fsynced.)
    """
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    partial = d.parent / f".{d.name}.{uuid.uuid4().hex[:12]}.partial"
    partial.mkdir()
    try:
        torch.save(student.state_dict(), partial / WEIGHTS_FILE)
        spec.save(partial / SPEC_FILE)
        if recipe is not None:
            (partial / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
        _rename_into_place(partial, d)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return d


def _rename_into_place(source: Path, target: Path) -> None:
    """Rename folder ``source`` to ``target``, replacing a ``target`` that exists."""
    if not target.exists():
        source.rename(target)
        return
    old = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.old"
    target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild a saved student in any process: base model from the spec, structure, then weights."""
    from structsearch.models import create_model, read_state_dict

    d = Path(directory)
    if not (d / SPEC_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{d} is not a saved student: it needs {SPEC_FILE} and {WEIGHTS_FILE}")
    spec = ArchSpec.load(d / SPEC_FILE)
    base = create_model(spec.model, **spec.kwargs)
    student = build_student(base, spec)
    state = read_state_dict(d / WEIGHTS_FILE)
    try:
        student.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {d} do not fit the spec beside them: {one_line(e)}") from None
    if (d / RECIPE_FILE).is_file():  # where its parts came from (ViT feature KD pairs blocks and heads by it)
        try:
            family_for(student).restore_origins(student, json.loads((d / RECIPE_FILE).read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{d / RECIPE_FILE} does not describe the student beside it: {one_line(e)}") from None
    return student.eval()
