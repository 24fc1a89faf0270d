"""ViT-to-ViT inheritance: a ViT student computes exactly what its ViT teacher computes, minus what it drops.

The identity spec must reproduce the teacher bit for bit. A reduced student (fewer blocks, heads
and MLP units) must equal the teacher with the dropped parts *ablated* -- a dropped block's residual
branches zeroed (the block becomes the identity), a dropped head's and MLP unit's output columns
zeroed -- so that every weight the student keeps is the teacher's own, at the right place.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from structsearch.errors import CheckpointError
from structsearch.models import create_model
from structsearch.space import ArchSpec, BlockSpec, space_of
from structsearch.surgery import RECIPE_FILE, build_student_with_recipe, load_student, save_student

TINY = dict(img_size=8, patch_size=2, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=10)


def _teacher() -> nn.Module:
    return create_model("cifar_vit", seed=0, **TINY).eval()


def test_identity_spec_reproduces_the_vit_teacher_exactly() -> None:
    teacher = _teacher()
    spec = space_of(teacher, "cifar_vit", TINY).full_spec()
    student, _ = build_student_with_recipe(teacher, spec)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), teacher(x))


def _ablate(teacher: nn.Module, recipe: dict) -> nn.Module:
    """The teacher with what ``recipe`` dropped switched off in place of being removed."""
    ablated = copy.deepcopy(teacher)
    for i, block in enumerate(ablated.blocks):
        entry = recipe["blocks"][f"blocks.{i}"]
        with torch.no_grad():
            if not entry["keep"]:
                for layer in (block.attn.proj, block.mlp.fc2):  # x + 0 + 0: the identity
                    layer.weight.zero_()
                    layer.bias.zero_()
                continue
            if "heads" in entry:
                hd = block.attn.head_dim
                dropped = [h for h in range(block.attn.num_heads) if h not in entry["heads"]]
                for h in dropped:
                    block.attn.proj.weight[:, h * hd : (h + 1) * hd] = 0
            if "channels" in entry:
                keep = torch.zeros(block.mlp.fc2.in_features, dtype=torch.bool)
                keep[entry["channels"]] = True
                block.mlp.fc2.weight[:, ~keep] = 0
    return ablated


def test_reduced_vit_student_equals_the_teacher_with_the_dropped_parts_ablated() -> None:
    teacher = _teacher()
    space = space_of(teacher, "cifar_vit", TINY)
    full = space.full_spec()
    spec = full.replace_block(0, 0, BlockSpec(keep=True, width=0.5, heads=2))
    spec = spec.replace_block(0, 1, BlockSpec(keep=False, width=1.0, heads=4))
    spec = spec.replace_block(0, 2, BlockSpec(keep=True, width=1.0, heads=1))
    assert isinstance(spec, ArchSpec)
    student, recipe = build_student_with_recipe(teacher, spec)
    assert len(student.blocks) == 2 and student.blocks[0].attn.num_heads == 2 and student.blocks[1].attn.num_heads == 1
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        got, want = student.eval()(x), _ablate(teacher, recipe)(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    with torch.no_grad():  # and the ablation is not a no-op: the teacher itself says something else
        assert not torch.allclose(teacher(x), want, atol=1e-3)


def test_a_saved_student_loads_paired_with_the_teacher_blocks_and_heads_it_was_cut_from(tmp_path: Path) -> None:
    teacher = create_model("cifar_vit", seed=1, **TINY).eval()  # not the seed a loaded student's base gets
    full = space_of(teacher, "cifar_vit", TINY).full_spec()
    spec = full.replace_block(0, 0, BlockSpec(keep=True, width=1.0, heads=2))
    spec = spec.replace_block(0, 1, BlockSpec(keep=False, width=1.0, heads=4))
    spec = spec.replace_block(0, 2, BlockSpec(keep=True, width=1.0, heads=1))
    assert isinstance(spec, ArchSpec)
    student, recipe = build_student_with_recipe(teacher, spec)
    origins = [(b.teacher_index, b.attn.teacher_heads) for b in student.blocks]
    assert origins == [(0, recipe["blocks"]["blocks.0"]["heads"]), (2, recipe["blocks"]["blocks.2"]["heads"])]
    loaded = load_student(save_student(tmp_path / "s", student, spec, recipe))
    assert [(b.teacher_index, b.attn.teacher_heads) for b in loaded.blocks] == origins
    (tmp_path / "s" / RECIPE_FILE).write_text('{"blocks": {"blocks.0": {"keep": true}}}')  # one block, not two
    with pytest.raises(CheckpointError, match="recipe keeps 1 blocks but the student has 2"):
        load_student(tmp_path / "s")
    (tmp_path / "s" / RECIPE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="does not describe the student beside it") as e:
        load_student(tmp_path / "s")
    assert "\n" not in str(e.value)
