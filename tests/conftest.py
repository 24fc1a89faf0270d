"""Shared fixtures: small models of every family, real data paths, a fixed torch thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from structsearch.data import LoadedData, load_data, split_train_val

# Two threads, or the cores shared out among pytest-xdist's workers (scripts/test.sh runs most tests
# on every core at once, one worker per core).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_TRAIN = SHARED / "data" / "cifar10" / "train.npz"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test.npz"
WEIGHTS = SHARED / "weights" / "cifar_resnet"
RESNET20_CKPT = WEIGHTS / "resnet20-12fca82f.th"
RESNET56_CKPT = WEIGHTS / "resnet56-4bfd9763.th"


def needs_shared(*paths: Path) -> pytest.MarkDecorator:
    """Skip a test when the shared real data is absent (it is present here and in CI)."""
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data missing: {missing}")


@pytest.fixture(scope="module")
def digits() -> LoadedData:
    """scikit-learn's digits (8 px), the embedded default data of the fast proxy tests."""
    return load_data("digits")


@pytest.fixture(scope="module")
def split(digits: LoadedData) -> tuple[torch.Tensor, torch.Tensor]:
    """300 training and 200 validation rows of :func:`digits`."""
    return split_train_val(digits.y, 200, 0, train_size=300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A private STRUCTSEARCH_HOME (studies.db, teachers, caches, artifacts) for one test module."""
    d = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("STRUCTSEARCH_HOME", str(d))
    mp.delenv("STRUCTSEARCH_STORAGE", raising=False)
    mp.delenv("STRUCTSEARCH_ARTIFACTS", raising=False)
    yield d
    mp.undo()
