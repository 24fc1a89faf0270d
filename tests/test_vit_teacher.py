"""The shipped CIFAR-10 ViT teacher (``teachers/cifar_vit.safetensors``): its reported accuracy is what
``structsearch eval`` measures on the file, a ViT student inherits it exactly, PSAQ-ViT inverts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from structsearch.cli import app
from structsearch.data import Preprocess, load_data
from structsearch.distill.synthesis import synthesize
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student
from structsearch.teach import load_recipe
from tests.cli_helpers import runner
from tests.conftest import CIFAR_TEST, needs_shared

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "teachers" / "cifar_vit.safetensors"
SIDECAR = SHIPPED.with_suffix(".json")

pytestmark = needs_shared(CIFAR_TEST)
#: A floor under the shipped 82.78% that a wrong or damaged file would break (issue 15 asks 85%: not reached yet).
MIN_TEST_TOP1 = 80.0


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return create_model("cifar_vit", checkpoint=SHIPPED).eval()


def test_the_shipped_file_is_small_fp16_and_says_how_it_was_made() -> None:
    side = json.loads(SIDECAR.read_text())
    assert SHIPPED.stat().st_size <= 6 * 1024 * 1024
    assert side["dtype"] == "float16" and side["model"] == "cifar_vit" and side["seed"] == 0
    assert side["command"].startswith("structsearch teach ")
    assert side["test"]["data"].endswith("test.npz[5000:]")
    # the recipe it was trained by is the one shipped beside it
    assert side["recipe"] == load_recipe(ROOT / "studies" / "teach_vit_cifar10.yaml").settings()


@pytest.mark.slow
def test_eval_on_the_shipped_file_reproduces_its_reported_test_accuracy() -> None:
    side = json.loads(SIDECAR.read_text())
    data = f"npz:{CIFAR_TEST}[5000:]"
    res = runner.invoke(
        app, ["eval", "--model", "cifar_vit", "--checkpoint", str(SHIPPED), "--data", data, "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1"] == side["test"]["top1"] >= MIN_TEST_TOP1


def test_the_identity_student_of_the_shipped_teacher_is_the_teacher(teacher: nn.Module) -> None:
    x = Preprocess.from_model(teacher)(load_data(f"npz:{CIFAR_TEST}[:32]").x)
    student = build_student(teacher, space_of(teacher, "cifar_vit").full_spec()).eval()
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))


def test_psaq_vit_on_the_shipped_teacher_raises_target_agreement(teacher: nn.Module) -> None:
    pre = Preprocess.from_model(teacher)
    agreement = [
        synthesize(teacher, pre, 20, method="psaq", iterations=n, batch_size=20, seed=0, device="cpu").target_agreement
        for n in (1, 10)
    ]
    assert agreement[1] >= agreement[0] + 0.3, agreement  # measured: 0.25 -> 0.80 (1.00 at 30)


def test_the_vit_study_names_the_shipped_teacher_and_inherits_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from structsearch.search import load_study_spec
    from structsearch.search.context import plan_search

    monkeypatch.chdir(ROOT)  # the spec's paths are relative to the project root
    plan = plan_search(load_study_spec("studies/cifar10_vit.yaml"))
    assert plan.inherit and plan.spec.teacher.checkpoint == "teachers/cifar_vit.safetensors"
    assert plan.smallest_cost.macs < plan.max_macs < plan.teacher_cost.macs
