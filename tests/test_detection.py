"""Detection studies: COCO and mosaic data, the FCOS detector as a searchable model, its cost and KD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structsearch.cost import measure_cost
from structsearch.detection import DetectionSource, load_detection_data
from structsearch.detection.data import make_mosaic
from structsearch.detection.losses import binary_kl, detection_kd_loss
from structsearch.errors import DataError
from structsearch.models import create_model
from structsearch.models.detector import Detector
from structsearch.space import BlockSpec, space_of
from structsearch.surgery import build_student

TINY = dict(backbone="cifar_resnet20", num_classes=3, image_size=32, stages=1, fpn_channels=32, head_convs=1)


def _detector(**changes: object) -> Detector:
    torch.manual_seed(0)
    model = create_model("fcos_detector", **{**TINY, **changes})
    assert isinstance(model, Detector)
    return model.eval()


# -- COCO ------------------------------------------------------------------------------------------


def _coco(tmp_path: Path, annotations: list[dict[str, object]] | None = None) -> str:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name, (w, h) in {"a.png": (20, 10), "b.png": (20, 10), "empty.png": (8, 8)}.items():
        Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(images / name)
    coco = {
        "images": [
            {"id": 7, "file_name": "a.png"},
            {"id": 3, "file_name": "b.png"},
            {"id": 9, "file_name": "empty.png"},
        ],
        "categories": [{"id": 12, "name": "cat"}, {"id": 5, "name": "dog"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 7, "category_id": 12, "bbox": [2, 1, 10, 4]},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 20, 10], "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 5, "bbox": [4, 2, 6, 6]},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    return f"coco:{images}:{ann}"


def test_coco_boxes_labels_crowd_and_empty_images(tmp_path: Path) -> None:
    data = load_detection_data(_coco(tmp_path) + "?size=20x40")  # H=20, W=40: boxes scale x2 both ways
    assert data.x.shape == (3, 3, 20, 40)
    assert data.class_names == ("dog", "cat")  # category ids 5, 12 -> labels 0, 1
    # images in id order: 3 (b.png), 7 (a.png), 9 (empty.png)
    assert data.boxes[0].tolist() == [[8.0, 4.0, 20.0, 16.0]]
    assert data.labels[0].tolist() == [0]
    assert data.boxes[1].tolist() == [[4.0, 2.0, 24.0, 10.0], [0.0, 0.0, 40.0, 20.0]]
    assert data.labels[1].tolist() == [1, 0]
    assert data.crowd[1].tolist() == [False, True]
    assert data.boxes[2].shape == (0, 4) and data.labels[2].numel() == 0
    train = data.targets(torch.tensor([1]))  # crowd boxes are not trained on
    assert train[0]["boxes"].tolist() == [[4.0, 2.0, 24.0, 10.0]]
    metric = data.targets(torch.tensor([1, 2]), crowd=True)  # the metric gets them, flagged
    assert metric[0]["iscrowd"].tolist() == [0, 1] and metric[1]["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ([{"image_id": 7, "category_id": 12, "bbox": [0, 0, -1, 3]}], r"annotations\[0\] bbox must be"),
        ([{"image_id": 99, "category_id": 12, "bbox": [0, 0, 1, 1]}], "image_id 99"),
        ([{"image_id": 7, "category_id": 4, "bbox": [0, 0, 1, 1]}], "category_id 4"),
    ],
)
def test_bad_coco_annotations_are_one_line_errors(tmp_path: Path, annotations: list, message: str) -> None:
    source = _coco(tmp_path, annotations)
    for image in (tmp_path / "images").iterdir():
        image.unlink()  # checked before any image is touched: no decode error can come first
    with pytest.raises(DataError, match=message) as e:
        load_detection_data(source)
    assert "\n" not in str(e.value)


def test_unreadable_coco_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read coco annotation file ann.json") as e:
        load_detection_data(f"coco:{tmp_path}:{tmp_path / 'ann.json'}")
    assert "\n" not in str(e.value)


# -- mosaic ----------------------------------------------------------------------------------------


def test_mosaic_is_deterministic_and_seeded() -> None:
    src = DetectionSource.parse("mosaic:digits?n=6&size=32&seed=3&objects=3")
    a, b = make_mosaic(src), make_mosaic(src)
    assert torch.equal(a.x, b.x)
    assert all(torch.equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert all(torch.equal(p, q) for p, q in zip(a.labels, b.labels))
    assert all(1 <= len(box) <= 3 for box in a.boxes)
    boxes = torch.cat(a.boxes)
    assert bool((boxes[:, 2:] > boxes[:, :2]).all()) and float(boxes.max()) <= 32 and float(boxes.min()) >= 0
    other = make_mosaic(DetectionSource.parse("mosaic:digits?n=6&size=32&seed=4&objects=3"))
    assert not torch.equal(a.x, other.x)


def test_mosaic_options_are_checked() -> None:
    with pytest.raises(DataError, match="unknown mosaic data option 'count'"):
        DetectionSource.parse("mosaic:digits?count=3")
    with pytest.raises(DataError, match="unknown detection data source"):
        DetectionSource.parse("digits")


# -- the detector as a searchable model ------------------------------------------------------------


def test_identity_student_reproduces_the_teachers_detections() -> None:
    teacher = _detector()
    space = space_of(teacher, "fcos_detector", TINY)
    student = build_student(teacher, space.full_spec()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = teacher.detect(x), student.detect(x)
    assert sum(len(d["boxes"]) for d in expected) > 0
    for e, g in zip(expected, got):
        assert torch.equal(e["boxes"], g["boxes"]) and torch.equal(e["scores"], g["scores"])
        assert torch.equal(e["labels"], g["labels"])


def test_detector_macs_count_the_network_only_and_grow_with_backbone_width() -> None:
    teacher = _detector()
    outputs = teacher(torch.zeros(1, 3, 32, 32))  # raw outputs of every location: no decoding, no NMS
    assert outputs.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 3 + 5)
    full = measure_cost(teacher, 32)
    body = measure_cost(teacher.body, 32)
    assert full.macs > body.macs  # FPN and head are counted beside the backbone
    space = space_of(teacher, "fcos_detector", TINY)
    narrow_spec = space.full_spec()
    for i, stage in enumerate(space.stages):
        for j in range(len(stage)):
            narrow_spec = narrow_spec.replace_block(i, j, BlockSpec(True, 0.5, None))
    narrow = measure_cost(build_student(teacher, narrow_spec), 32)
    assert narrow.macs < full.macs and narrow.params < full.params
    assert full.macs - narrow.macs == body.macs - measure_cost(build_student(teacher, narrow_spec).body, 32).macs


def test_detection_kd_loss_is_zero_at_the_teacher_and_decreases_with_training() -> None:
    teacher = _detector()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        target = teacher.split(teacher(x))
    assert float(detection_kd_loss(target, target, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(binary_kl(torch.tensor([0.0]), torch.tensor([3.0])).squeeze()) > 0
    space = space_of(teacher, "fcos_detector", TINY)
    student = build_student(teacher, space.smallest_spec()).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = detection_kd_loss(student.split(student(x)), target, 2.0, confidence=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
