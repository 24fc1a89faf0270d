"""``save_student`` is atomic: a save that fails part-way leaves no half-written student behind.

The failure is a real one, no mock: a recipe that JSON cannot write makes the save raise after the
weights and the spec are on disk -- the same point a full disk or a ``kill -9`` can hit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from structsearch.models import create_model
from structsearch.space import ArchSpec, space_of
from structsearch.surgery import build_student_with_recipe, load_student, save_student


def _student(full: bool) -> tuple[torch.nn.Module, ArchSpec, dict[str, Any]]:
    teacher = create_model("cifar_resnet20", num_classes=10).eval()
    space = space_of(teacher, "cifar_resnet20", {"num_classes": 10})
    spec = space.full_spec() if full else space.smallest_spec()
    student, recipe = build_student_with_recipe(teacher, spec)
    return student.eval(), spec, recipe


def test_a_failed_save_leaves_no_folder_and_keeps_an_earlier_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "study" / "trial-00000"
    student, spec, recipe = _student(full=False)
    unwritable = {**recipe, "oops": object()}  # json.dumps raises TypeError after student.pt and spec.json

    with pytest.raises(TypeError):
        save_student(target, student, spec, unwritable)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no partial folder left either

    # an earlier complete save survives a failed replacement untouched, and still loads
    save_student(target, student, spec, recipe)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    bigger, bigger_spec, bigger_recipe = _student(full=True)
    with pytest.raises(TypeError):
        save_student(target, bigger, bigger_spec, {**bigger_recipe, "oops": object()})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in target.parent.iterdir()] == ["trial-00000"]
    assert sum(p.numel() for p in load_student(target).parameters()) == sum(p.numel() for p in student.parameters())

    # a successful save replaces the folder whole
    save_student(target, bigger, bigger_spec, bigger_recipe)
    assert sum(p.numel() for p in load_student(target).parameters()) == sum(p.numel() for p in bigger.parameters())
    assert [p.name for p in target.parent.iterdir()] == ["trial-00000"]
