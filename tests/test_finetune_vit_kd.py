"""ViT feature KD in the fine-tune (``structsearch finetune``): a tiny real ViT study on digits.

The study's ``proxy.feature_kd`` is the one setting: the fine-tune applies it by default
(``FinetuneConfig.feature_kd`` / ``--no-feature-kd`` override it), pairing the student's blocks and
heads with the teacher's they were cut from, also when the student is loaded from its saved files.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import structsearch
from structsearch.data import Preprocess
from structsearch.distill.vit_kd import ViTHints, ViTTeacherTaps, block_origins
from structsearch.errors import StructsearchError
from structsearch.finetune import FinetuneConfig, FinetuneError, finetune_trial
from structsearch.search import parse_study_spec, run_search, study_records
from structsearch.search.context import load_study_data, plan_search
from structsearch.search.stored import StoredTrial
from structsearch.surgery import RECIPE_FILE

TINY = dict(img_size=8, patch_size=2, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=10)
DATA = {"train": "digits[:384]", "val_size": 0.2, "input_size": 8, "hflip": False}
#: Feature KD needs no trained teacher: a randomly initialised one keeps the test fast.
NO_MEASURE = {"latency": False, "memory": False}
STUDY = {
    "name": "ft-vit-kd",
    "teacher": {"model": "cifar_vit", "kwargs": TINY},
    "data": DATA,
    "measure": NO_MEASURE,
    # the depth baseline drops a whole block: the student's blocks are not the teacher's 0..N-1
    "budget": {"flops": "60%"},
    "baselines": ["depth"],
    "trials": 1,
    "proxy": {"steps": 4, "batch_size": 32, "feature_kd": True},
}
FAST = dict(epochs=2, batch_size=32, device="cpu", lr=0.05, channels_last=False)


@pytest.fixture(scope="module")
def study(home: Path) -> optuna.Study:
    return run_search(parse_study_spec(STUDY))


def _artifact(study: optuna.Study, trial: int) -> Path:
    return StoredTrial.open(study.study_name, trial).require_saved()


def _feature_loss(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    """Hidden-state MSE + attention KL of ``student`` against ``teacher`` (blocks paired as loaded: by the recipe)."""
    hints = ViTHints(teacher, student.eval(), attention_weight=1.0)
    _, t_feats = ViTTeacherTaps(teacher, attention=True)(torch.arange(len(x)), x)
    with torch.no_grad():
        student(x)
        loss = hints.loss(t_feats).item()
    hints.remove()
    return loss


def test_feature_kd_fine_tune_lowers_the_feature_loss(study: optuna.Study, tmp_path: Path) -> None:
    (rec,) = [r for r in study_records(study) if r.trained]
    artifact = _artifact(study, rec.trial)
    assert len(structsearch.load(artifact).blocks) < TINY["depth"], "the baseline should have dropped a block"

    on = finetune_trial(study.study_name, rec.trial, FinetuneConfig(**FAST), out=tmp_path / "on")
    off = finetune_trial(study.study_name, rec.trial, FinetuneConfig(**FAST, feature_kd=False), out=tmp_path / "off")
    assert on.start == "artifact" and on.extra["feature_kd"] and not off.extra["feature_kd"]
    assert on.settings_hash != off.settings_hash and on.test_top1 is not None

    plan = plan_search(parse_study_spec(STUDY))
    d = load_study_data(plan)
    x = Preprocess.from_model(d.teacher)(d.val.x[d.val_idx][:128])
    # interrupted and resumed: the projections and their optimizer state come back with the student
    part = finetune_trial(study.study_name, rec.trial, FinetuneConfig(**FAST), out=tmp_path / "re", stop_after_steps=13)
    assert not part.completed
    resumed = finetune_trial(study.study_name, rec.trial, FinetuneConfig(**FAST), out=tmp_path / "re")
    assert resumed.kd.resumed_from_step == 13 and resumed.test_top1 == on.test_top1
    a, b = structsearch.load(on.out).state_dict(), structsearch.load(resumed.out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the KD phase moves the student away from the teacher's features; feature KD holds it closer
    with_kd = _feature_loss(d.teacher, structsearch.load(on.out), x)
    without = _feature_loss(d.teacher, structsearch.load(off.out), x)
    assert with_kd < 0.8 * without, (with_kd, without)
    assert not any(m._forward_hooks for m in d.teacher.modules())


def test_a_loaded_student_is_paired_by_its_recipe(study: optuna.Study) -> None:
    (rec,) = [r for r in study_records(study) if r.trained]
    artifact = _artifact(study, rec.trial)
    student = structsearch.load(artifact)
    recipe = json.loads((artifact / RECIPE_FILE).read_text())
    kept = [int(name.split(".")[1]) for name, e in recipe["blocks"].items() if e["keep"]]
    teacher = load_study_data(plan_search(parse_study_spec(STUDY))).teacher
    assert block_origins(teacher, student) == kept != list(range(len(kept)))


def test_feature_kd_is_refused_for_a_cnn_fine_tune(home: Path, tmp_path: Path) -> None:
    cnn = {
        "name": "ft-cnn-kd",
        "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}},
        "data": DATA,
        "measure": NO_MEASURE,
        "budget": {"flops": "50%"},
        "baselines": ["uniform"],
        "trials": 1,
        "proxy": {"steps": 1, "batch_size": 32},
    }
    s = run_search(parse_study_spec(cnn))
    (rec,) = [r for r in study_records(s) if r.trained]
    with pytest.raises(FinetuneError, match="implemented for ViT teachers and students, not cifar_resnet") as e:
        finetune_trial(s.study_name, rec.trial, FinetuneConfig(**FAST, feature_kd=True), out=tmp_path / "x")
    assert "\n" not in str(e.value) and isinstance(e.value, StructsearchError)
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
