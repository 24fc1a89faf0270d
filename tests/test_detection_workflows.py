"""After a detection search: the CLI's tables, recheck, fine-tune and export of a detection study.

One tiny real study (FCOS over a CIFAR ResNet-20 backbone, a 4-epoch teacher (about 4% mAP) on a 32 px digits
mosaic, 3-step proxies) is searched once per module; every command then runs on it for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

import structsearch
from structsearch.cli import app
from structsearch.data import Preprocess
from structsearch.detection import load_detection_data
from structsearch.detection.proxy import mean_ap
from structsearch.errors import FinetuneError, StructsearchError
from structsearch.finetune import FinetuneConfig, finetune_trial
from structsearch.models.detector import Detector
from structsearch.search import parse_study_spec, run_search
from structsearch.search.export import export_onnx, export_trial
from structsearch.search.recheck import recheck
from tests.cli_helpers import one_line_error, runner

SPEC = {
    "name": "det-workflows",
    "task": "detection",
    "teacher": {
        "model": "fcos_detector",
        "kwargs": {
            "backbone": "cifar_resnet20",
            "num_classes": 10,
            "image_size": 32,
            "stages": 1,
            "fpn_channels": 32,
            "head_convs": 1,
        },
        "train_epochs": 4,
    },
    "data": {
        "train": "mosaic:digits?n=96&size=32&seed=0&objects=2",
        "val": "mosaic:digits:test?n=32&size=32&seed=1&objects=2",
        "input_size": 32,
    },
    "budget": {"flops": "60%"},
    "measure": {"latency": False, "memory": False},
    "sampler": "random",
    "trials": 5,
    "proxy": {"steps": 3, "batch_size": 16},
}


@pytest.fixture(scope="module")
def study(home) -> optuna.Study:
    return run_search(parse_study_spec(SPEC))


def test_tables_name_the_detection_score(study: optuna.Study) -> None:
    """pareto/best say mAP (and show mAP@.5 per trial), never top-1, for a detection study."""
    res = runner.invoke(app, ["pareto", "--study", study.study_name])
    assert res.exit_code == 0, res.output
    assert "score (mAP %)" in res.stdout and "mAP@.5" in res.stdout and "top-1" not in res.stdout
    first = min(t.number for t in study.trials if t.user_attrs.get("trained"))
    res = runner.invoke(app, ["best", "--study", study.study_name, "--budget-flops", "100%"])
    assert res.exit_code == 0, res.output
    assert "score (mAP %)" in res.stdout and "top-1" not in res.stdout
    map50 = study.trials[first].user_attrs["map50"]
    assert isinstance(map50, float) and 0 <= map50 <= 100


def _trained(study: optuna.Study) -> list[int]:
    return [t.number for t in study.trials if t.user_attrs.get("trained") and t.state.name == "COMPLETE"]


def test_recheck_retrains_detection_students_and_scores_them_by_map(study: optuna.Study) -> None:
    result = recheck(study.study_name, top=1, steps=12)
    assert result.complete and result.steps == 12 and len(result.entries) == 2
    proxy = {t.number: t.values[0] for t in study.trials if t.values}
    assert all(e.proxy_score == proxy[e.trial] and 0 <= e.long_score <= 100 for e in result.entries)
    # four times the steps moves the detectors: the long scores are new measurements, not copies
    assert any(e.long_score != e.proxy_score for e in result.entries)


def test_finetune_trains_a_detection_student_with_kd_and_reports_map(study: optuna.Study, tmp_path: Path) -> None:
    trial = _trained(study)[-1]
    events = []
    r = finetune_trial(
        study.study_name, trial, FinetuneConfig(epochs=2, batch_size=16), out=tmp_path, on_progress=events.append
    )
    assert r.completed and r.start == "artifact" and r.kd.total_steps == 2 * (96 // 16)
    assert r.test_top1 is None and r.test_map is not None and r.test_map50 is not None
    assert 0 <= r.test_map <= r.test_map50 <= 100  # mAP@.5 counts every match mAP@[.5:.95] counts, and more
    assert r.teacher_map == pytest.approx(study.user_attrs["teacher_score"], abs=1e-3)  # the study's own teacher
    assert events and events[-1].step == r.kd.total_steps and events[-1].running_top1 is None
    # what was saved is what was scored
    student = structsearch.load(tmp_path)
    assert isinstance(student, Detector)
    val = load_detection_data(SPEC["data"]["val"])  # type: ignore[index]
    pre = Preprocess.from_model(student, (32, 32))
    m, m50 = mean_ap(student, pre(val.x), val.targets(torch.arange(len(val)), crowd=True))
    assert (m, m50) == pytest.approx((r.test_map, r.test_map50), abs=1e-3)
    assert json.loads((tmp_path / "result.json").read_text())["test_map"] == r.test_map
    kept = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs["finetune"]
    assert kept[str(trial)]["test_map"] == r.test_map
    with pytest.raises(FinetuneError, match="--downstream"):
        finetune_trial(study.study_name, trial, FinetuneConfig(epochs=1), downstream="digits", out=tmp_path)


def test_finetune_command_prints_map(study: optuna.Study, tmp_path: Path) -> None:
    trial = _trained(study)[0]
    args = ["finetune", "--study", study.study_name, "--trial", str(trial), "--epochs", "1", "--batch-size", "32"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "test mAP" in res.stdout and "top-1" not in res.stdout
    one_line_error([*args, "--test", "digits"], "--test", "detection fine-tune")


def test_export_writes_onnx_of_the_detector_network(study: optuna.Study, tmp_path: Path) -> None:
    trial = _trained(study)[0]
    export_trial(study.study_name, trial, tmp_path, onnx=True)
    student = structsearch.load(tmp_path).eval()
    val = load_detection_data(SPEC["data"]["val"])  # type: ignore[index]
    x = Preprocess.from_model(student, (32, 32))(val.x[:3])
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["head_outputs"]
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = student(x).numpy()
    assert got.shape == expected.shape == (3, expected.shape[1], 10 + 5)  # raw head outputs, no NMS
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_model_torch_onnx_cannot_export_is_a_one_line_error(tmp_path: Path) -> None:
    class Unexportable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svd(x.flatten(2))[1]  # no ONNX operator

    with pytest.raises(StructsearchError, match="torch.onnx cannot export Unexportable") as e:
        export_onnx(Unexportable(), (3, 8, 8), tmp_path / "m.onnx")
    assert "\n" not in str(e.value)
