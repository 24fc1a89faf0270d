"""Detection specs through the service: ``mosaic:digits`` needs no root, every file a detection
spec names (``coco:`` images and annotations, a mosaic's object source, a detector's
``backbone_checkpoint``) stays inside the data roots, and a mosaic's in-memory size is capped.

The admission checks run without a database; the submission runs through the real API (TestClient)
against a real PostgreSQL: a 202 plans the study in the planning child and queues its trials.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from structsearch.service.admission import AdmissionError, WorkLimits, admit_spec
from structsearch.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1"


def digits_spec(**data: str) -> dict[str, Any]:
    """studies/detection_digits_mosaic.yaml's spec, with ``data`` fields replaced."""
    spec = yaml.safe_load((ROOT / "studies" / "detection_digits_mosaic.yaml").read_text())
    spec["data"].update(data)
    return spec


def test_a_mosaic_of_digits_needs_no_data_root() -> None:
    spec = admit_spec(digits_spec(), [], 50)
    assert spec.task == "detection" and spec.data.train.startswith("mosaic:digits")


def test_every_file_of_a_detection_spec_must_lie_inside_the_roots(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    inside = f"coco:{root}/images:{root}/annotations.json?size=48"
    assert admit_spec(digits_spec(train=inside), [root], 50).data.train == inside
    assert admit_spec(digits_spec(train=f"mosaic:npz:{root}/cifar.npz[:100]?n=10&size=48"), [root], 50)
    for data, field, path in (
        ({"train": f"coco:/etc/images:{root}/a.json"}, "data.train", "/etc/images"),
        ({"val": f"coco:{root}/images:/etc/a.json"}, "data.val", "/etc/a.json"),
        ({"train": f"coco:{root}/../images:{root}/a.json"}, "data.train", f"{root}/../images"),
        ({"train": "mosaic:npz:/elsewhere/cifar.npz?n=10&size=48"}, "data.train", "/elsewhere/cifar.npz"),
    ):
        with pytest.raises(AdmissionError, match=re.escape(f"{field}: '{path}' is outside the allowed data roots")):
            admit_spec(digits_spec(**data), [root], 50)
    with pytest.raises(AdmissionError, match="absolute"):
        admit_spec(digits_spec(train="coco:images:a.json"), [root], 50)
    spec = digits_spec()
    spec["teacher"]["kwargs"]["backbone_checkpoint"] = "/etc/weights.th"
    with pytest.raises(AdmissionError, match="teacher.kwargs.backbone_checkpoint: '/etc/weights.th' is outside"):
        admit_spec(spec, [root], 50)


def test_detector_kwargs_are_bounded_and_a_mosaic_is_capped() -> None:
    spec = digits_spec()
    spec["teacher"]["kwargs"]["fpn_channels"] = 1 << 20
    with pytest.raises(AdmissionError, match=re.escape("fpn_channels: must be an integer (or a short list of them)")):
        admit_spec(spec, [], 50)
    spec = digits_spec()
    spec["teacher"]["kwargs"]["backbone_kwargs"] = {"checkpoint_path": "/x"}
    with pytest.raises(AdmissionError, match="only numbers, strings, booleans"):
        admit_spec(spec, [], 50)
    big = digits_spec(train="mosaic:digits?n=1000000&size=48")
    with pytest.raises(AdmissionError, match=re.escape("1000000 canvases of 48x48 px is 2,304,000,000 pixels")):
        admit_spec(big, [], 50)
    assert admit_spec(big, [], 50, limits=WorkLimits(max_mosaic_pixels=1 << 32))
    with pytest.raises(AdmissionError, match="at most 32 objects per mosaic canvas"):
        admit_spec(digits_spec(train="mosaic:digits?objects=1000&size=48"), [], 50)
    with pytest.raises(AdmissionError, match="data.train size: at most 1024"):
        admit_spec(digits_spec(train="mosaic:digits?size=4096"), [], 50)


@pytest.fixture
def client(settings: ServiceSettings, key: str) -> Iterator[TestClient]:
    from api import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_a_detection_spec_is_admitted_and_queued_through_the_api(client: TestClient, data_root: Path) -> None:
    spec = digits_spec()
    spec["trials"] = 2
    r = client.post(f"{API}/searches", json=spec)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    outside = copy.deepcopy(spec)
    outside["name"] = "coco-outside"
    outside["data"]["train"] = "coco:/etc/images:/etc/instances.json?size=48"
    r = client.post(f"{API}/searches", json=outside)
    assert r.status_code == 422, r.text
    assert "data.train: '/etc/images' is outside the allowed data roots" in r.json()["detail"]
