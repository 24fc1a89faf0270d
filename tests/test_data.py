"""Tests of structsearch.data: specs, loading and caching, validation, splits, transforms.

Everything runs on tiny synthetic files under tmp_path, except the one slow test that reads the
real CIFAR-10 test archive when /work/shared holds it. Nothing downloads.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structsearch.data import (
    Augment,
    DataSpec,
    LoadedData,
    Preprocess,
    batch_stream,
    batches,
    check_labels,
    clear_cache,
    fingerprint,
    load_data,
    proportional_counts,
    split_train_val,
    train_val_rows,
)
from structsearch.errors import DataError, StructsearchError

CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test.npz"


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts from an empty per-process cache, so cache hits are the test's own."""
    clear_cache()
    yield
    clear_cache()


def write_npz(path: Path, n: int = 6, h: int = 5, w: int = 4, classes: int = 3, **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8),
        "y": np.arange(n, dtype=np.int64) % classes,
    }
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def assert_one_line_error(spec: str, *fragments: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_data(spec)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# -- DataSpec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "npz:/work/shared/data/cifar10/test.npz",
        "npz:/work/shared/data/cifar10/test.npz[:5000]",
        "npz:relative/train.npz[5000:]",
        "npz:a.npz[-100:-10]",
        "imagefolder:/data/flowers",
        "imagefolder:/data/flowers[2:8]?size=64x48",
        "torchvision:CIFAR10:/data",
        "torchvision:CIFAR10:/data:test",
        "torchvision:MNIST:/data:test[:100]?download=1",
        "digits",
        "digits:test",
        "digits:test[:10]",
    ],
)
def test_spec_round_trip(text: str) -> None:
    spec = DataSpec.parse(text)
    assert str(spec) == text
    assert DataSpec.parse(str(spec)) == spec


def test_spec_fields_and_equivalent_spellings() -> None:
    spec = DataSpec.parse("torchvision:CIFAR10:/data:test?download=1[5000:]")
    assert (spec.kind, spec.name, spec.path, spec.split, spec.download) == (
        "torchvision",
        "CIFAR10",
        "/data",
        "test",
        True,
    )
    assert (spec.start, spec.stop) == (5000, None)
    assert spec == DataSpec.parse("torchvision:CIFAR10:/data:test[5000:]?download=1")
    assert DataSpec.parse("digits:train") == DataSpec.parse("digits")
    assert DataSpec.parse("imagefolder:/d?size=32").size == (32, 32)
    assert DataSpec.parse("torchvision:CIFAR10:/data").with_download().download is True
    assert DataSpec.parse("digits").with_download() == DataSpec.parse("digits")
    assert DataSpec.parse(spec) is spec


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "valid forms"),
        ("csv:/tmp/a.csv", "npz:PATH, imagefolder:PATH, torchvision:NAME:ROOT"),
        ("/tmp/a.npz", "digits"),
        ("npz:", "needs a path"),
        ("npz:a.npz[::2]", "bad row slice"),
        ("npz:a.npz[1]", "bad row slice"),
        ("npz:a.npz?download=1", "takes no options"),
        ("torchvision:CIFAR10:/d?size=3", "only option"),
        ("imagefolder:/d?size=0", "size must be"),
        ("torchvision:CIFAR10:/d?download=maybe", "download must be"),
        ("torchvision:CIFAR10", "name and a root"),
        ("digits:valid", "digits takes"),
    ],
)
def test_spec_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        DataSpec.parse(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_spec_constructor_rejects_inapplicable_fields() -> None:
    with pytest.raises(DataError):
        DataSpec("npz")
    with pytest.raises(DataError):
        DataSpec("npz", path="a.npz", split="test")
    with pytest.raises(DataError):
        DataSpec("digits", download=True)
    with pytest.raises(DataError):
        DataSpec("npz", path="a.npz", size=(8, 8))


# -- npz ---------------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", class_names=np.array(["cat", "dog", "eel"]))
    raw = np.load(path)
    data = load_data(f"npz:{path}")
    assert isinstance(data, LoadedData)
    assert data.x.shape == (6, 3, 5, 4) and data.x.dtype == torch.uint8 and data.x.is_contiguous()
    assert data.y.dtype == torch.int64 and data.y.tolist() == raw["y"].tolist()
    assert torch.equal(data.x, torch.from_numpy(raw["x"]).permute(0, 3, 1, 2))
    assert (data.num_classes, data.class_names) == (3, ("cat", "dog", "eel"))
    assert data.source == f"npz:{path}" and len(data) == 6 and data.image_size == (5, 4)


def test_npz_without_class_names_counts_classes_from_labels(tmp_path: Path) -> None:
    data = load_data(f"npz:{write_npz(tmp_path / 'd.npz', classes=4)}")
    assert (data.num_classes, data.class_names) == (4, ("0", "1", "2", "3"))


def test_slices_are_views_with_the_whole_sources_classes(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", n=10, classes=5)
    full = load_data(f"npz:{path}")
    head = load_data(f"npz:{path}[:2]")  # labels 0, 1 only
    tail = load_data(f"npz:{path}[-3:]")
    assert torch.equal(head.x, full.x[:2]) and head.y.tolist() == [0, 1]
    assert torch.equal(tail.y, full.y[7:])
    assert head.num_classes == 5 and head.source == f"npz:{path}[:2]"
    assert head.x.data_ptr() == full.x.data_ptr()  # a view: one decode, one copy in memory
    assert_one_line_error(f"npz:{path}[10:]", "selects no rows", "it has 10")
    assert_one_line_error(f"npz:{path}[5:5]", "selects no rows")


@pytest.mark.parametrize("shape", [(4, 3, 2), (4, 3, 2, 1)])
def test_grayscale_is_expanded_to_three_channels(tmp_path: Path, shape: tuple[int, ...]) -> None:
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0, 1, 0, 1]))
    data = load_data(f"npz:{tmp_path / 'g.npz'}")
    assert data.x.shape == (4, 3, 3, 2) and data.x.is_contiguous()
    for c in range(3):
        assert torch.equal(data.x[:, c], torch.from_numpy(x.reshape(4, 3, 2)))


def test_cache_returns_the_same_object_and_rereads_a_modified_file(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    first = load_data(f"npz:{path}")
    assert load_data(DataSpec.parse(f"npz:{path}")) is first
    assert load_data(f"npz:{path}[1:3]") is load_data(f"npz:{path}[1:3]")

    write_npz(path, n=8)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a distinct mtime even on coarse clocks
    second = load_data(f"npz:{path}")
    assert second is not first and len(second) == 8
    assert len(load_data(f"npz:{path}[1:]")) == 7

    clear_cache()
    assert load_data(f"npz:{path}") is not second


def test_fingerprint_is_stable_and_tracks_content(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    fp = fingerprint(load_data(f"npz:{path}"))
    assert len(fp) == 64 and fingerprint(load_data(f"npz:{path}")) == fp
    clear_cache()
    assert fingerprint(load_data(f"npz:{path}")) == fp  # decoded again, same bytes
    assert fingerprint(load_data(f"npz:{path}[1:]")) != fp
    np.savez(tmp_path / "e.npz", x=np.load(path)["x"], y=np.load(path)["y"][::-1].copy())
    assert fingerprint(load_data(f"npz:{tmp_path / 'e.npz'}")) != fp


def test_check_labels(tmp_path: Path) -> None:
    data = load_data(f"npz:{write_npz(tmp_path / 'd.npz', classes=3)}")
    check_labels(data, 3)
    check_labels(data, 1000)
    with pytest.raises(DataError, match="range over 0..2 but the model has 2 classes"):
        check_labels(data, 2)
    with pytest.raises(DataError):
        check_labels(data, 0)


# -- bad input ---------------------------------------------------------------------------------------


def _bad_npz(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"{kind}.npz"
    x = np.zeros((4, 3, 3, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    elif kind == "text":
        path.write_text("x,y\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, x)
    elif kind == "no_y":
        np.savez(path, x=x)
    elif kind == "float_x":
        np.savez(path, x=x.astype(np.float32), y=y)
    elif kind == "rgba":
        np.savez(path, x=np.zeros((4, 3, 3, 4), np.uint8), y=y)
    elif kind == "flat":
        np.savez(path, x=np.zeros((4, 27), np.uint8), y=y)
    elif kind == "length":
        np.savez(path, x=x, y=np.array([0, 1, 0]))
    elif kind == "negative":
        np.savez(path, x=x, y=np.array([0, -1, 0, 1]))
    elif kind == "float_y":
        np.savez(path, x=x, y=y.astype(np.float64))
    elif kind == "object":
        np.savez(path, x=np.array([x[0], None], dtype=object), y=y[:2])
    elif kind == "names":
        np.savez(path, x=x, y=np.array([0, 1, 2, 3]), class_names=np.array(["a", "b"]))
    elif kind == "empty":
        np.savez(path, x=np.zeros((0, 3, 3, 3), np.uint8), y=np.zeros(0, np.int64))
    return f"npz:{path}"


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("corrupt", "cannot read NumPy archive"),
        ("text", "cannot read NumPy archive"),
        ("npy", "not an .npz archive"),
        ("no_y", "no array y"),
        ("float_x", "must be uint8"),
        ("rgba", "N×H×W×3"),
        ("flat", "N×H×W×3"),
        ("length", "x has 4 images but y has 3 labels"),
        ("negative", "non-negative"),
        ("float_y", "integer class labels"),
        ("object", "cannot read NumPy archive"),
        ("names", "class_names lists 2 classes"),
        ("empty", "no images"),
    ],
)
def test_bad_npz_is_a_one_line_data_error(tmp_path: Path, kind: str, fragment: str) -> None:
    assert_one_line_error(_bad_npz(tmp_path, kind), fragment)


def test_missing_paths_and_unknown_sources(tmp_path: Path) -> None:
    assert_one_line_error(f"npz:{tmp_path / 'nope.npz'}", f"data file not found: {tmp_path / 'nope.npz'}")
    assert_one_line_error(f"npz:{tmp_path}", "is a folder")
    assert_one_line_error(f"imagefolder:{tmp_path / 'nope'}", "data folder not found")
    error = assert_one_line_error("hdf5:/x.h5", "npz:PATH", "imagefolder:PATH", "torchvision:NAME:ROOT", "digits")
    assert isinstance(error, StructsearchError)


def test_torchvision_errors_without_download(tmp_path: Path) -> None:
    assert_one_line_error(f"torchvision:NoSuchSet:{tmp_path}", "unknown torchvision dataset 'NoSuchSet'", "CIFAR10")
    assert_one_line_error(
        f"torchvision:CIFAR10:{tmp_path}", "not found", "--download", f"put the files under {tmp_path}"
    )
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


# -- torchvision (tiny fake MNIST in its raw idx format) ------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(12, 6, 6), dtype=np.uint8)
    labels = np.arange(12) % 10
    for prefix, rows in (("train", slice(0, 8)), ("t10k", slice(8, 12))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[rows])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[rows])
    return images, labels


def test_torchvision_mnist_train_and_test_splits(tmp_path: Path) -> None:
    images, labels = _fake_mnist(tmp_path)
    train = load_data(f"torchvision:mnist:{tmp_path}")
    test = load_data(f"torchvision:MNIST:{tmp_path}:test")
    assert train.x.shape == (8, 3, 6, 6) and test.x.shape == (4, 3, 6, 6)
    assert torch.equal(train.x[:, 1], torch.from_numpy(images[:8]))
    assert test.y.tolist() == labels[8:].tolist() and train.num_classes == 10
    assert train.source == f"torchvision:MNIST:{tmp_path}"
    # Spelling and the download flag do not change the data, so they share the cache entry.
    assert load_data(f"torchvision:MNIST:{tmp_path}?download=1") is train


def test_torchvision_download_code_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``?download=1`` reaches torchvision's download (faked here: tests never touch the network)."""
    import torchvision.datasets

    def offline(self) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got URLError")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    assert_one_line_error(f"torchvision:MNIST:{tmp_path}?download=1", "could not download", "URLError")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: _fake_mnist(Path(self.root)))
    assert_one_line_error(f"torchvision:MNIST:{tmp_path}", "not found", "--download")
    spec = DataSpec.parse(f"torchvision:MNIST:{tmp_path}").with_download()
    downloaded = load_data(spec)
    assert len(downloaded) == 8
    assert load_data(spec) is downloaded  # the download changed the root; that is not a new version
    assert load_data(f"torchvision:MNIST:{tmp_path}[:3]").x.data_ptr() == downloaded.x.data_ptr()


# -- imagefolder ---------------------------------------------------------------------------------------


def _write_png(path: Path, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)


def test_imagefolder_with_three_classes(tmp_path: Path) -> None:
    for c, name in enumerate(["ant", "bee", "cat"]):
        for i in range(2):
            _write_png(tmp_path / name / f"{i}.png", (6, 4), 40 * c + i)  # PIL size is (W, H)
    _write_png(tmp_path / "cat" / "big.png", (12, 9), 200)  # another size: resized to the first's
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()

    data = load_data(f"imagefolder:{tmp_path}")
    assert data.x.shape == (7, 3, 4, 6) and data.x.dtype == torch.uint8
    assert data.y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert (data.num_classes, data.class_names) == (3, ("ant", "bee", "cat"))
    assert data.x[2, :, 0, 0].tolist() == [40, 215, 7]
    assert data.x[6, :, 0, 0].tolist() == [200, 55, 7]  # big.png sorts after 0.png, 1.png
    assert load_data(f"imagefolder:{tmp_path}") is data

    resized = load_data(f"imagefolder:{tmp_path}?size=3x5")
    assert resized.x.shape == (7, 3, 3, 5)

    _write_png(tmp_path / "ant" / "2.png", (6, 4), 1)  # a new image invalidates the cache
    assert len(load_data(f"imagefolder:{tmp_path}")) == 8


def test_imagefolder_needs_two_classes_with_images(tmp_path: Path) -> None:
    _write_png(tmp_path / "only" / "0.png", (4, 4), 1)
    assert_one_line_error(f"imagefolder:{tmp_path}", "1 class folder(s); need at least 2")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(f"imagefolder:{tmp_path}", "has no images")
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    assert_one_line_error(f"imagefolder:{tmp_path}", "cannot decode image")


# -- digits ------------------------------------------------------------------------------------------


def test_digits_parts_are_disjoint_and_stratified() -> None:
    from sklearn.datasets import load_digits

    train, test = load_data("digits"), load_data("digits:test")
    assert train.x.shape == (1438, 3, 8, 8) and test.x.shape == (359, 3, 8, 8)
    assert train.x.dtype == torch.uint8 and int(train.x.max()) == 255 and train.num_classes == 10
    assert torch.equal(train.x[:, 0], train.x[:, 2])

    def rows(d: LoadedData) -> Counter:
        return Counter((d.x[i, 0].numpy().tobytes(), int(d.y[i])) for i in range(len(d)))

    bunch = load_digits()
    full_x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    full = Counter((full_x[i].tobytes(), int(bunch.target[i])) for i in range(len(full_x)))
    assert rows(train) + rows(test) == full  # a partition of all 1797 rows: disjoint and complete
    per_class = torch.bincount(test.y, minlength=10) * 1797 - torch.bincount(torch.from_numpy(bunch.target)) * 359
    assert per_class.abs().max() < 1797  # each class within one image of its 20 % share
    assert len(load_data("digits:test[:50]")) == 50


# -- splits ------------------------------------------------------------------------------------------


@st.composite
def labels_and_sizes(draw):
    n = draw(st.integers(2, 300))
    classes = draw(st.integers(1, 6))
    y = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    if draw(st.booleans()):
        val = draw(st.integers(1, n - 1))
    else:
        val = draw(st.floats(0.5 / n + 1e-9, 1 - 0.5 / n - 1e-9).filter(lambda f: 1 <= round(f * n) <= n - 1))
    train = draw(st.none() | st.integers(1, n))
    return torch.tensor(y, dtype=torch.int64), val, train, draw(st.integers(0, 2**31))


@settings(max_examples=150, deadline=None)
@given(labels_and_sizes())
def test_split_train_val_properties(case) -> None:
    y, val_size, train_size, seed = case
    n = len(y)
    train, val = split_train_val(y, val_size, seed, train_size)
    again = split_train_val(y, val_size, seed, train_size)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert train.dtype == val.dtype == torch.int64
    assert torch.equal(train, train.sort().values) and len(set(train.tolist())) == len(train)
    assert not set(train.tolist()) & set(val.tolist())

    n_val = val_size if isinstance(val_size, int) else round(val_size * n)
    assert len(val) == n_val
    counts = torch.bincount(y)
    val_counts = torch.bincount(y[val], minlength=len(counts))
    assert ((val_counts * n - counts * n_val).abs() < n).all()  # proportional within 1 per class

    left = counts - val_counts
    n_train = n - n_val if train_size is None else min(train_size, n - n_val)
    assert len(train) == n_train
    train_counts = torch.bincount(y[train], minlength=len(counts))
    assert ((train_counts * (n - n_val) - left * n_train).abs() < n - n_val).all()
    # Capping the training part never moves validation rows.
    assert torch.equal(split_train_val(y, val_size, seed)[1], val)


def test_train_val_rows_carves_or_takes_a_separate_source() -> None:
    y = torch.arange(100) % 4
    carved = train_val_rows(y, None, 20, 3, 50)
    assert all(torch.equal(a, b) for a, b in zip(carved, split_train_val(y, 20, 3, 50)))
    # a separate validation source: all of its rows are scored, the cap takes a stratified subset
    train, val = train_val_rows(y, 30, 20, 3, 40)
    assert torch.equal(val, torch.arange(30)) and len(train) == 40 and torch.bincount(y[train]).tolist() == [10] * 4
    for cap in (None, 100, 500):  # no cap, or one at or above the training rows: every row trains
        assert torch.equal(train_val_rows(y, 30, 20, 3, cap)[0], torch.arange(100))


def test_split_depends_on_seed_and_rejects_bad_sizes() -> None:
    y = torch.arange(100) % 4
    assert not torch.equal(split_train_val(y, 20, 0)[1], split_train_val(y, 20, 1)[1])
    for bad in (0, 100, 0.0, 1.0, 1.5, True, "10"):
        with pytest.raises(DataError):
            split_train_val(y, bad, 0)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        split_train_val(y, 10, 0, train_size=0)
    with pytest.raises(DataError):
        split_train_val(y.float(), 10, 0)


def test_proportional_counts_sum_and_ties() -> None:
    assert proportional_counts([5, 5], 3) == [2, 1]
    assert proportional_counts([1, 1, 1], 2) == [1, 1, 0]
    assert sum(proportional_counts([7, 3, 11], 9)) == 9
    assert proportional_counts([0, 4], 2) == [0, 2]


def test_batches() -> None:
    ordered = list(batches(10, 4, None, drop_last=False))
    assert [b.tolist() for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(b) for b in batches(10, 4, None, drop_last=True)] == [4, 4]
    shuffled = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(5), drop_last=False)))
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.dtype == torch.int64
    same = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(5), drop_last=False)))
    assert torch.equal(shuffled, same)
    assert list(batches(0, 4, None, drop_last=False)) == []
    with pytest.raises(DataError):
        next(batches(10, 0, None, drop_last=False))


# -- transforms ----------------------------------------------------------------------------------------


def test_preprocess_from_timm_model_and_resize() -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    pre = Preprocess.from_model(model)
    assert pre.input_size == (224, 224)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    assert pre.interpolation == "bicubic"
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = pre(x)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    assert Preprocess.from_model(model, input_size=32)(x).shape == (2, 3, 32, 32)


def test_preprocess_normalises_exactly_without_resize() -> None:
    pre = Preprocess((2, 2), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert pre(x)[0, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    smaller = Preprocess((4, 2), mean=(0, 0, 0), std=(1, 1, 1))(torch.full((1, 3, 8, 4), 51, dtype=torch.uint8))
    assert smaller.shape == (1, 3, 4, 2) and torch.allclose(smaller, torch.full_like(smaller, 0.2))
    with pytest.raises(DataError):
        Preprocess((2, 2), (0, 0, 0), (1, 1, 1), interpolation="lanczos")
    with pytest.raises(DataError):
        Preprocess((2, 2), (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError):
        pre(torch.zeros(1, 3, 2, 2))


def _reference_augment(x: torch.Tensor, seed: int, p: int) -> torch.Tensor:
    """Per-image loop drawing the same random numbers in the same order as Augment."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    out = []
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_augment_is_a_deterministic_crop_and_flip() -> None:
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=2)
    a = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.is_contiguous()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    assert torch.equal(a, _reference_augment(x, 3, 2))
    assert (a == 0).any()  # some zero padding came in (x itself has no zeros)

    flips = Augment(crop_padding=0)(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flips, x))
    assert Augment(crop_padding=0, hflip=False)(x, torch.Generator()) is x
    with pytest.raises(DataError):
        Augment(crop_padding=-1)


# -- real data ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_TEST.exists(), reason="real CIFAR-10 archive not present")
def test_real_cifar10_test_archive() -> None:
    data = load_data(f"npz:{CIFAR_TEST}")
    assert data.x.shape == (10000, 3, 32, 32) and data.x.dtype == torch.uint8 and data.x.is_contiguous()
    assert data.num_classes == 10 and data.class_names[0] == "airplane" and data.class_names[9] == "truck"
    assert torch.bincount(data.y[:1000], minlength=10).tolist() == [100] * 10
    val = load_data(f"npz:{CIFAR_TEST}[:5000]")
    report = load_data(f"npz:{CIFAR_TEST}[5000:]")
    assert len(val) == len(report) == 5000
    assert torch.bincount(val.y, minlength=10).tolist() == [500] * 10
    check_labels(val, 10)
    mean = data.x.float().mean(dim=(0, 2, 3)) / 255
    assert mean.tolist() == pytest.approx([0.494, 0.485, 0.450], abs=0.01)


def test_every_source_kind_has_a_registered_reader() -> None:
    from structsearch.data.sources import _READERS, register_source
    from structsearch.data.spec import KINDS

    assert sorted(_READERS) == sorted(KINDS)
    with pytest.raises(ValueError, match="already registered"):
        register_source("npz")(lambda spec: None)  # type: ignore[arg-type,return-value]


def test_batch_stream_runs_whole_epochs_for_a_fixed_number_of_steps() -> None:
    """7 steps of 3 over 10 rows: three batches an epoch (the short one dropped), each epoch a
    permutation, the same stream for the same seed, no permutation drawn past the last step."""
    g = torch.Generator().manual_seed(0)
    out = list(batch_stream(10, 3, g, 7))
    assert len(out) == 7 and all(len(b) == 3 for b in out)
    for epoch in (out[0:3], out[3:6]):
        rows = torch.cat(epoch).tolist()
        assert len(set(rows)) == 9 and set(rows) <= set(range(10))
    assert [b.tolist() for b in batch_stream(10, 3, torch.Generator().manual_seed(0), 7)] == [b.tolist() for b in out]
    state = g.get_state()
    assert list(batch_stream(10, 3, g, 0)) == [] and torch.equal(g.get_state(), state)
    with pytest.raises(DataError, match="batch size 11 is larger than the 10 rows"):
        batch_stream(10, 11, g, 1)
