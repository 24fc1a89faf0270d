"""Unit tests without a database: spec admission, settings from the environment, URLs, keys."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

import pytest

from structsearch.errors import one_line
from structsearch.service.admission import (
    AdmissionError,
    WorkLimits,
    admit_spec,
    check_inside_roots,
    meta_param_count,
)
from structsearch.service.apikeys import hash_key, new_key
from structsearch.service.database import libpq_url
from structsearch.service.settings import ServiceSettings
from tests.service.conftest import tiny_spec


def test_paths_must_resolve_inside_a_root(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.npz"
    outside.write_bytes(b"")
    (root / "link.npz").symlink_to(outside)
    assert check_inside_roots(str(root / "sub" / "x.npz"), "f", [root]) == root / "sub" / "x.npz"
    for bad in (str(root / ".." / "secret.npz"), str(root / "link.npz"), "/etc/passwd", str(tmp_path)):
        with pytest.raises(AdmissionError, match="outside the allowed data roots"):
            check_inside_roots(bad, "f", [root])
    with pytest.raises(AdmissionError, match="absolute"):
        check_inside_roots("root/x.npz", "f", [root])
    with pytest.raises(AdmissionError, match="no data roots"):
        check_inside_roots(str(root / "x.npz"), "f", [])


def test_admit_spec(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    spec = admit_spec(
        tiny_spec(data={"train": f"npz:{root}/a.npz[:100]", "val": f"imagefolder:{root}/val"}), [root], 10
    )
    assert spec.name == "tiny"
    assert admit_spec(tiny_spec(), [], 10).data.train == "digits"  # digits needs no root
    with pytest.raises(AdmissionError, match="data.val"):
        admit_spec(tiny_spec(data={"train": "digits", "val": "npz:/elsewhere/v.npz"}), [root], 10)
    with pytest.raises(AdmissionError, match="student.kwargs: checkpoint_path"):
        admit_spec(tiny_spec(student={"model": "resnet18", "kwargs": {"checkpoint_path": "/x"}}), [root], 10)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("STRUCTSEARCH_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("STRUCTSEARCH_HOME", str(tmp_path))
    default = ServiceSettings()
    assert (
        default.database_url == f"sqlite:///{tmp_path / 'studies.db'}" and default.artifacts == tmp_path / "artifacts"
    )
    assert not default.open_reads and default.data_roots == []  # reads need a key unless opened
    monkeypatch.setenv("STRUCTSEARCH_STORAGE", "postgresql+psycopg://a@b/c")
    assert ServiceSettings().database_url == "postgresql+psycopg://a@b/c"
    monkeypatch.setenv("STRUCTSEARCH_DATABASE_URL", "postgresql+psycopg://x@y/z")
    monkeypatch.setenv("STRUCTSEARCH_DATA_ROOTS", f"{tmp_path}/a, {tmp_path}/b{os.pathsep}{tmp_path}/c")
    monkeypatch.setenv("STRUCTSEARCH_OPEN_READS", "true")
    s = ServiceSettings()
    assert s.database_url == "postgresql+psycopg://x@y/z" and s.open_reads
    assert s.data_roots == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert s.with_database("sqlite:///other.db").database_url == "sqlite:///other.db"
    assert s.with_database(None) is s


def test_libpq_url() -> None:
    assert libpq_url("postgresql+psycopg://u:p%40w@h:5432/db") == "postgresql://u:p%40w@h:5432/db"
    assert libpq_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert libpq_url("sqlite:///x.db") == "sqlite:///x.db"


def test_api_keys_are_random_and_hashed() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith("ss_") and len(a) > 40
    assert hash_key(a) == hash_key(a) != hash_key(b) and len(hash_key(a)) == 64


def test_model_kwargs_are_allow_listed_and_bounded() -> None:
    """Only size and regularisation kwargs, within bounds that name their setting (issue 13)."""
    ok = tiny_spec(teacher={"model": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 4, "depth": 6}})
    assert admit_spec(ok, [], 10).teacher.kwargs["depth"] == 6
    small_swin = {"img_size": 32, "window_size": 4, "embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]}
    swin = tiny_spec(teacher={"model": "swin_tiny_patch4_window7_224", "kwargs": small_swin})
    assert admit_spec(swin, [], 10).teacher.kwargs["depths"] == [2, 2, 2, 2]
    tinyvit = {"embed_dims": [16, 32, 48, 64], "depths": [2, 2, 2, 1], "window_sizes": [4, 4, 2, 1]}
    assert admit_spec(tiny_spec(teacher={"model": "tiny_vit_5m_224", "kwargs": tinyvit}), [], 10)
    for kwargs, fragment in (
        ({"depths": [2, 2, 500, 2]}, "from 1 to 128"),
        ({"embed_dims": list(range(1, 10))}, "a short list"),
        ({"window_size": 60_000}, "STRUCTSEARCH_MAX_IMAGE_SIDE"),
        ({"num_classes": 6_000_000}, "from 1 to 100000 (setting STRUCTSEARCH_MAX_NUM_CLASSES)"),
        ({"img_size": 60_000}, "STRUCTSEARCH_MAX_IMAGE_SIDE"),
        ({"depth": 10_000}, "from 1 to 128"),
        ({"drop_rate": 5}, "from 0.0 to 1.0"),
        ({"block_fn": "Bottleneck"}, "not an allowed model kwarg"),
        ({"num_classes": True}, "an integer"),
    ):
        with pytest.raises(AdmissionError, match=re.escape(fragment)):
            admit_spec(tiny_spec(teacher={"model": "resnet50", "kwargs": kwargs}), [], 10)


def test_model_size_is_counted_without_allocating() -> None:
    """resnet50 with 100,000 classes (230M parameters, 0.9 GB) is counted on the meta device."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert meta_param_count("resnet50", {"num_classes": 100_000}) == 25_557_032 - 2_049_000 + 204_900_000
    with pytest.raises(AdmissionError, match="STRUCTSEARCH_MAX_MODEL_PARAMS"):
        admit_spec(tiny_spec(teacher={"model": "resnet50", "kwargs": {"num_classes": 100_000}}), [], 10)
    with pytest.raises(AdmissionError, match=r"student: .* at most 1,000,000"):
        admit_spec(tiny_spec(student={"model": "resnet18"}), [], 10, limits=WorkLimits(max_model_params=1_000_000))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 200  # KiB -> MiB


def test_work_settings_are_capped() -> None:
    limits = WorkLimits(max_threads=2)
    for changes, fragment in (
        ({"measure": {"batch_size": 1024}}, "measure.batch_size: at most 64"),
        ({"measure": {"repeats": 10_000, "warmup": 1000}}, "measure.repeats: at most 200"),
        ({"measure": {"threads": 3}}, "measure.threads: at most 2"),
        ({"proxy": {"steps": 1_000_000}}, "proxy.steps: at most 20000"),
        ({"proxy": {"device": "cuda:banana"}}, "proxy.device: unknown device"),
        ({"data": {"train": "imagefolder:/d?size=60000x60000"}}, "data.train size: at most 1024"),
        ({"teacher": {"model": "cifar_resnet20", "train_epochs": 1000}}, "teacher.train_epochs: at most 200"),
    ):
        with pytest.raises(AdmissionError, match=re.escape(fragment)):
            admit_spec(tiny_spec(**changes), [Path("/d")], 10, limits=limits)
    assert admit_spec(tiny_spec(measure={"threads": 2}, proxy={"device": "cuda:1"}), [], 10, limits=limits)


def test_batch_times_image_pixels_is_capped() -> None:
    """Each cap alone allows a batch of 1024 at 1024 px; their product is capped too."""
    at_max_side = {"train": "digits", "input_size": 1024}
    wide = WorkLimits(max_proxy_batch=4096)  # an operator who raised the batch cap
    with pytest.raises(AdmissionError) as e:
        admit_spec(tiny_spec(data=at_max_side, proxy={"batch_size": 4096}), [], 10, limits=wide)
    assert one_line(e.value) == (
        "AdmissionError: proxy.batch_size: 4096 images of 1024x1024 px is 4,294,967,296 pixels a batch; this "
        "service allows at most 67,108,864 (setting STRUCTSEARCH_MAX_BATCH_PIXELS); use a smaller batch or image size"
    )
    for changes, fragment in (
        ({"data": at_max_side, "proxy": {"batch_size": 1024}}, "proxy.batch_size: 1024 images of 1024x1024 px"),
        ({"data": {"train": "digits", "resolutions": [32, 720]}, "proxy": {"batch_size": 256}}, "of 720x720 px"),
        ({"data": {"train": "imagefolder:/d?size=1000x600"}, "proxy": {"batch_size": 128}}, "128 images of 1000x600"),
    ):
        with pytest.raises(AdmissionError, match=re.escape(fragment)):
            admit_spec(tiny_spec(**changes), [Path("/d")], 10)
    measured = tiny_spec(
        data={"train": "digits", "input_size": 256}, proxy={"batch_size": 8}, measure={"batch_size": 32}
    )
    with pytest.raises(AdmissionError, match=re.escape("measure.batch_size: 32 images of 256x256 px")):
        admit_spec(measured, [], 10, limits=WorkLimits(max_batch_pixels=1 << 20))
    assert admit_spec(tiny_spec(data={"train": "digits", "input_size": 224}, proxy={"batch_size": 1024}), [], 10)
