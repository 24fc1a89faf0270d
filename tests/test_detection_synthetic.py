"""Data-free detection studies: ``data.train: synthetic:N`` made from a detection teacher.

Tiny and real: an FCOS detector over a CIFAR ResNet-20 at 32 px whose BatchNorm statistics come
from real digit mosaics (so the inversion has something to match) and whose class head is scaled
so that it detects a few objects per canvas, some scoring above the pseudo-box threshold and some
below (the tests need detections on both sides of it, not a good detector; training one takes
minutes here). A handful of canvases, a few inversion steps, a two-trial search.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from structsearch.data import Preprocess
from structsearch.data.spec import SynthesisSpec
from structsearch.detection import DetectionData, DetectionSource, load_detection_data
from structsearch.detection.synthetic import (
    PSEUDO_BOX_SCORE,
    _flatten,
    _unflatten,
    pseudo_boxes,
    synthesize_detection,
)
from structsearch.distill import TeacherCache
from structsearch.distill.synthesis import SynthesisResult
from structsearch.errors import DataError
from structsearch.models import create_model
from structsearch.models.detector import Detector
from structsearch.search import parse_study_spec, run_search
from structsearch.search.context import plan_search
from structsearch.search.detection import load_detection_study
from tests.test_detection_workflows import SPEC as WORKFLOW_SPEC

TINY = WORKFLOW_SPEC["teacher"]["kwargs"]  # 10 classes, 32 px, one stage, 32-wide FPN, one-conv head
SIZE = (32, 32)
VAL = "mosaic:digits:test?n=8&size=32&seed=1&objects=2"
CPU = torch.device("cpu")


def make_teacher() -> Detector:
    torch.manual_seed(0)
    model = create_model("fcos_detector", **TINY)
    assert isinstance(model, Detector)
    pre = Preprocess.from_model(model, SIZE)
    canvases = load_detection_data("mosaic:digits?n=32&size=32&seed=0&objects=2").x
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(pre(canvases))  # BatchNorm running statistics of real canvases
        cls = model.fcos.head.classification_head.cls_logits
        cls.weight.mul_(10.0)  # spatially varied class scores ...
        cls.bias.fill_(-4.5)  # ... around the threshold: a few boxes a canvas, some none
    return model.eval()


@pytest.fixture(scope="module")
def teacher() -> Detector:
    return make_teacher()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, teacher: Detector) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "fcos.pt"
    torch.save(teacher.state_dict(), path)
    return path


def _synth(
    teacher: Detector, seed: int = 0, cache: TeacherCache | None = None, n: int = 6
) -> SynthesisResult[DetectionData]:
    pre = Preprocess.from_model(teacher, SIZE)
    return synthesize_detection(teacher, pre, SynthesisSpec(n, "auto", 3, seed, n), device="cpu", cache=cache)


def test_synthetic_canvases_carry_the_teachers_confident_detections(teacher: Detector) -> None:
    res = _synth(teacher)
    data = res.data
    assert isinstance(data, DetectionData) and res.method == "deepinversion"
    assert data.x.dtype == torch.uint8 and tuple(data.x.shape) == (6, 3, *SIZE) and data.image_size == SIZE
    assert data.num_classes == 10 and data.source == "synthetic:6?iters=3&method=deepinversion&batch=6"
    # the targets of a mosaic/coco set: float xyxy boxes, int64 labels, no crowd
    targets = data.targets(torch.arange(len(data)))
    assert len(targets) == 6 and all(t["boxes"].dtype == torch.float32 for t in targets)
    assert all(t["boxes"].shape == (len(t["labels"]), 4) and t["labels"].dtype == torch.int64 for t in targets)
    assert not any(bool(c.any()) for c in data.crowd)
    # pseudo-boxes = the teacher's own post-processed detections scoring >= the threshold (with an area)
    pre = Preprocess.from_model(teacher, SIZE)
    with torch.inference_mode():
        detections = teacher.detect(pre(data.x))
    dropped = 0
    for det, boxes, labels in zip(detections, data.boxes, data.labels):
        b = det["boxes"]
        keep = (det["scores"] >= PSEUDO_BOX_SCORE) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        dropped += int((~keep).sum())
        assert torch.equal(det["labels"][keep], labels)
        torch.testing.assert_close(det["boxes"][keep], boxes, atol=1e-4, rtol=0)
    assert sum(len(b) for b in data.boxes) > 0 and dropped > 0  # the threshold kept some and dropped some
    # the agreement is the fraction of canvases with a pseudo-box of their target class
    hit = [bool((y == int(t)).any()) for y, t in zip(data.labels, res.targets, strict=True)]
    assert res.target_agreement == pytest.approx(sum(hit) / len(hit))
    assert "confidence" in res.losses and "bn" in res.losses


def test_canvases_without_detections_are_kept_empty(teacher: Detector) -> None:
    x = load_detection_data("mosaic:digits?n=4&size=32&seed=2&objects=2").x
    pre = Preprocess.from_model(teacher, SIZE)
    none = pseudo_boxes(teacher, x, pre, CPU, score=1.01)  # no score reaches it
    assert len(none) == 4 and all(f["boxes"].shape == (0, 4) and len(f["labels"]) == 0 for f in none)
    some = pseudo_boxes(teacher, x, pre, CPU, score=0.0)
    mixed = [some[0], none[1], some[2]]  # an empty canvas between two with boxes survives the cache format
    assert len(mixed[0]["boxes"]) and len(mixed[2]["boxes"])
    boxes, labels = _unflatten(_flatten(mixed))
    assert [len(b) for b in boxes] == [len(f["boxes"]) for f in mixed] and len(boxes[1]) == 0
    assert all(torch.equal(b, f["boxes"]) and torch.equal(y, f["labels"]) for b, y, f in zip(boxes, labels, mixed))


def test_synthesis_is_deterministic_seeded_and_cached(teacher: Detector, tmp_path: Path) -> None:
    a, b, c = _synth(teacher, 5, n=4).data, _synth(teacher, 5, n=4).data, _synth(teacher, 6, n=4).data
    assert torch.equal(a.x, b.x) and all(torch.equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert not torch.equal(a.x, c.x)
    cache = TeacherCache(tmp_path)
    first = _synth(teacher, 5, cache, n=4)
    again = _synth(teacher, 5, cache, n=4)  # what a resumed search does: read back, no optimisation
    assert not first.cache_hit and again.cache_hit and torch.equal(again.data.x, a.x)
    assert all(torch.equal(p, q) for p, q in zip(again.data.boxes, first.data.boxes))
    assert again.losses == first.losses  # the figures of the run that made it
    metas = [json.loads(p.read_text())["info"] for p in tmp_path.glob("*/meta.json")]
    assert [m["what"] for m in metas] == ["synthetic-detection-images"]


# -- a study ---------------------------------------------------------------------------------------


def _spec(ckpt: Path | None, **data: object) -> dict:
    """The detection workflows' study, made data-free: its teacher from ``ckpt``, two trials."""
    teacher: dict = {"model": "fcos_detector", "kwargs": TINY}
    if ckpt is not None:
        teacher["checkpoint"] = str(ckpt)
    return {
        **WORKFLOW_SPEC,
        "name": "det-datafree",
        "teacher": teacher,
        "data": {**WORKFLOW_SPEC["data"], "train": "synthetic:8?iters=2&batch=8", "val": VAL, **data},
        "trials": 2,
        "baselines": [],
        "proxy": {"steps": 2, "batch_size": 4, "device": "cpu"},
    }


def test_plan_refuses_synthetic_detection_specs_it_cannot_run(ckpt: Path) -> None:
    cases = [
        (_spec(ckpt, val=None), "needs a real data.val"),
        (_spec(ckpt, train="mosaic:digits?n=8&size=32", val="synthetic:8"), "data.val cannot be synthetic; give real"),
        (_spec(None), "needs a checkpoint"),
        (_spec(ckpt, train="synthetic:8?method=psaq"), "psaq needs timm self-attention"),
    ]
    for spec, message in cases:
        with pytest.raises(DataError, match=message) as err:
            plan_search(parse_study_spec(spec))
        assert "\n" not in str(err.value)
    assert DetectionSource.parse("Synthetic:8?batch=8&iters=2").synthesis == SynthesisSpec(8, "auto", 2, 0, 8)
    with pytest.raises(DataError, match="synthesised from a detection teacher"):
        load_detection_data("synthetic:8")


def test_detection_search_on_synthetic_data_end_to_end(home: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRUCTSEARCH_CACHE", raising=False)
    spec = parse_study_spec(_spec(ckpt))
    study = run_search(spec)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    scored = [t for t in trials if t.user_attrs["trained"]]
    assert scored and all(0.0 <= t.values[0] <= 100.0 for t in scored)
    # the set went to the shared cache; loading the study again (a resumed search) reads it back
    entries = {
        p: p.stat().st_mtime_ns
        for p in (home / "cache").glob("*/meta.json")
        if json.loads(p.read_text())["info"]["what"] == "synthetic-detection-images"
    }
    assert len(entries) == 1
    again = load_detection_study(plan_search(spec))
    assert {p: p.stat().st_mtime_ns for p in entries} == entries
    assert again.train.source == "synthetic:8?iters=2&method=deepinversion&batch=8" and len(again.train) == 8
    assert again.val.source.startswith("mosaic:digits:test")  # scored on real canvases
