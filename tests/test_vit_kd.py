"""ViT feature KD: token hidden states through a projection, attention maps per kept head (tiny ViTs on digits)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from structsearch.data import Preprocess, load_data, split_train_val
from structsearch.distill import Distiller, ProxyConfig, TeacherCache, TeacherId
from structsearch.distill.vit_kd import ViTHints, ViTTeacherTaps, block_origins
from structsearch.models import create_model
from structsearch.space import BlockSpec, space_of
from structsearch.surgery import build_student

TINY = dict(img_size=8, patch_size=2, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=10)


def _teacher() -> nn.Module:
    return create_model("cifar_vit", seed=0, **TINY).eval()


def _reduced(teacher: nn.Module) -> nn.Module:
    spec = space_of(teacher, "cifar_vit", TINY).full_spec()
    spec = spec.replace_block(0, 1, BlockSpec(keep=False, width=1.0, heads=4))
    spec = spec.replace_block(0, 2, BlockSpec(keep=True, width=0.5, heads=2))
    return build_student(teacher, spec)


def _x() -> torch.Tensor:
    digits = load_data("digits[:64]")
    return Preprocess.from_model(_teacher())(digits.x)


def _train_on_hints(student: nn.Module, hints: ViTHints, x: torch.Tensor, t_feats: list[torch.Tensor]) -> list[float]:
    """25 Adam steps of the student and the hints' projections on the feature loss alone; the losses."""
    opt = torch.optim.Adam([*student.parameters(), *hints.parameters()], lr=3e-3)
    losses = []
    for _ in range(25):
        student(x)
        loss = hints.loss(t_feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    hints.remove()
    return losses


def test_identity_student_has_zero_hidden_and_attention_loss() -> None:
    teacher = _teacher()
    student = build_student(teacher, space_of(teacher, "cifar_vit", TINY).full_spec()).train()
    hints = ViTHints(teacher, student, attention_weight=1.0)
    x = _x()
    _, t_feats = ViTTeacherTaps(teacher, attention=True)(torch.arange(len(x)), x)
    student(x)
    assert hints.loss(t_feats).item() == 0.0
    hints.remove()
    # a reduced student is paired with the blocks and heads it was cut from, and differs from them
    reduced = _reduced(teacher)
    assert block_origins(teacher, reduced) == [0, 2]
    hints = ViTHints(teacher, reduced, attention_weight=1.0)
    assert hints.heads[1] is not None and len(hints.heads[1]) == 2
    reduced(x)
    assert hints.loss(t_feats).item() > 0


def test_vit_feature_kd_loss_decreases_and_projects_other_widths() -> None:
    teacher = _teacher()
    # another ViT of narrower width, from scratch: mapped evenly, through a learned projection
    student = create_model("cifar_vit", seed=1, **{**TINY, "embed_dim": 16, "num_heads": 2, "depth": 2}).train()
    hints = ViTHints(teacher, student, attention_weight=1.0)
    assert isinstance(hints.proj[0], nn.Linear) and hints.origins == [1, 2] and hints.heads == [None, None]
    x = _x()
    _, t_feats = ViTTeacherTaps(teacher, attention=True)(torch.arange(len(x)), x)
    losses = _train_on_hints(student, hints, x, t_feats)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_proxy_runs_vit_feature_kd_and_removes_its_hooks(tmp_path: Path) -> None:
    digits = load_data("digits")
    train_idx, val_idx = split_train_val(digits.y, 200, 0, train_size=300)
    teacher = _teacher()
    config = ProxyConfig(steps=6, batch_size=32, feature_kd=True, report_every=3, channels_last=False, device="cpu")
    distiller = Distiller(
        teacher,
        digits,
        train_idx,
        val_idx,
        Preprocess.from_model(teacher),
        config,
        teacher_id=TeacherId("cifar_vit", tuple(TINY.items())),
        cache=TeacherCache(tmp_path),
        augment=None,
    )
    student = _reduced(teacher)
    result = distiller.score(student, callback=lambda *_: None)
    assert math.isfinite(result.final_loss) and len(result.history) == 1
    assert not any(m._forward_hooks for m in student.modules()) and not any(m._forward_hooks for m in teacher.modules())


EVA = dict(img_size=8, patch_size=2, embed_dim=32, depth=3, num_heads=2, num_classes=10, init_values=1.0)


def test_an_eva_student_distils_its_origin_blocks_token_states(tmp_path: Path) -> None:
    """An Eva ViT (DINOv3's layout: register tokens, rotary embeddings) pairs a student's blocks with
    the teacher blocks they came from, also after a save and reload, and compares token states only
    (its attention maps are out of a hook's reach): zero loss at the identity, a positive one for a
    reduced student, and a narrower Eva from scratch trains its projected loss down."""
    from structsearch.distill.vit_kd import maps_computable
    from structsearch.surgery import build_student_with_recipe, load_student, save_student

    teacher = create_model("vit_small_patch16_dinov3", **EVA).eval()
    space = space_of(teacher, "vit_small_patch16_dinov3", EVA)
    assert not maps_computable(teacher)
    x = _x()[:, :, :8, :8]
    _, t_feats = ViTTeacherTaps(teacher, attention=True)(torch.arange(len(x)), x)
    assert len(t_feats) == 3  # token states of every block, no maps
    identity = build_student(teacher, space.full_spec()).train()
    hints = ViTHints(teacher, identity, attention_weight=1.0)
    assert hints.attention_weight == 0.0
    identity(x)
    assert hints.loss(t_feats).item() == 0.0
    hints.remove()

    spec = space.full_spec().replace_block(0, 0, BlockSpec(keep=False, width=1.0))
    spec = spec.replace_block(0, 2, BlockSpec(keep=True, width=0.5))
    student, recipe = build_student_with_recipe(teacher, spec)
    reloaded = load_student(save_student(tmp_path / "s", student, spec, recipe))
    assert block_origins(teacher, student) == block_origins(teacher, reloaded) == [1, 2]
    hints = ViTHints(teacher, student.train(), attention_weight=1.0)
    student(x)
    assert hints.loss(t_feats).item() > 0
    hints.remove()

    # another Eva of half the width, from scratch: mapped evenly, through a learned projection
    scratch = create_model("vit_small_patch16_dinov3", **{**EVA, "embed_dim": 16, "depth": 2}).train()
    hints = ViTHints(teacher, scratch, attention_weight=1.0)
    assert isinstance(hints.proj[0], nn.Linear) and hints.origins == [1, 2]
    losses = _train_on_hints(scratch, hints, x, t_feats)
    assert losses[-1] < 0.5 * losses[0], losses
