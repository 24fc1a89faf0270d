"""Acceptance of the KD proxy on real data: the ResNet-56 CIFAR-10 teacher and CIFAR-10 images.

Sized to finish in about two minutes on two CPU cores; bench/proxy.py measures the same things at
full size (10,000 training images, a few hundred steps). Validation uses held-out test images,
because the teacher memorised train.npz (see ../shared/data/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from structsearch.data import Preprocess, load_data
from structsearch.distill import Distiller, ProxyConfig, TeacherCache, TeacherId, top1, uniform_width_spec
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student
from tests.conftest import CIFAR_TEST, CIFAR_TRAIN, RESNET56_CKPT, needs_shared

pytestmark = [pytest.mark.slow, needs_shared(CIFAR_TRAIN, CIFAR_TEST, RESNET56_CKPT)]

STEPS = 30


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return create_model("cifar_resnet56", checkpoint=RESNET56_CKPT).eval()


def test_teacher_reproduces_its_published_accuracy(teacher: torch.nn.Module) -> None:
    test = load_data(f"npz:{CIFAR_TEST}[:2000]")
    acc = top1(teacher, test.x, test.y, Preprocess.from_model(teacher), 250, torch.device("cpu"))
    assert acc >= 92.0


def test_inherited_student_beats_scratch_and_is_deterministic(teacher: torch.nn.Module, tmp_path: Path) -> None:
    train = load_data(f"npz:{CIFAR_TRAIN}[:1000]")
    val = load_data(f"npz:{CIFAR_TEST}[:1000]")
    spec = uniform_width_spec(space_of(teacher, "cifar_resnet56"), 0.5)
    preprocess = Preprocess.from_model(teacher)
    base = dict(steps=STEPS, batch_size=64, views=1, device="cpu", bn_recalibration_batches=4)

    def distiller(**cfg) -> Distiller:
        return Distiller(
            teacher,
            train,
            torch.arange(len(train)),
            torch.arange(len(val)),
            preprocess,
            ProxyConfig(**{**base, **cfg}),
            val_data=val,
            teacher_id=TeacherId.of("cifar_resnet56", {}, RESNET56_CKPT),
            cache=TeacherCache(tmp_path),
        )

    inherited_kd = distiller()
    inherited = inherited_kd.score(build_student(teacher, spec))
    again = inherited_kd.score(build_student(teacher, spec))
    torch.manual_seed(0)
    scratch_model = build_student(create_model("cifar_resnet56"), spec)  # same structure, random weights
    scratch = distiller(lr=0.05).score(scratch_model)  # scratch at its own, larger learning rate
    assert inherited.val_top1 >= scratch.val_top1 + 10, (inherited, scratch)
    assert inherited.teacher_agreement > 0.7
    assert (again.val_top1, again.teacher_agreement, again.final_loss) == (
        inherited.val_top1,
        inherited.teacher_agreement,
        inherited.final_loss,
    )
