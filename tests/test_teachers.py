"""The teacher a study trains for itself is a function of its settings, not of the process."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from structsearch.data import Augment, Preprocess, fingerprint, load_data
from structsearch.models import create_model, file_hash
from structsearch.teachers import trained_teacher


def test_a_trained_teacher_does_not_depend_on_the_global_random_state(tmp_path: Path) -> None:
    # torch seeds its global generator differently in every process, and other work (trials,
    # threads) draws from it: the teacher's initial weights must not come from it
    digits = load_data("digits")
    rows = torch.arange(128)
    pre = Preprocess.from_model(create_model("cifar_resnet20", num_classes=10), (8, 8))
    teachers = []
    for run, draws in enumerate((1, 7)):
        torch.rand(draws)  # the global state differs between the two runs
        net, _ = trained_teacher(
            "cifar_resnet20",
            {"num_classes": 10},
            digits,
            fingerprint(digits),
            rows,
            pre,
            1,
            0,
            tmp_path / f"cache-{run}",  # no shared cache: each run trains its own
            Augment.for_size(8, hflip=False),
        )
        teachers.append(net.state_dict())
    assert teachers[0].keys() == teachers[1].keys()
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])


def test_a_seeded_model_is_reproducible_and_leaves_the_callers_stream_alone() -> None:
    # the cross-family student base and an untrained teacher are built with the study's seed
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = create_model("cifar_resnet20", num_classes=10, seed=5).state_dict()
    after = torch.rand(3)  # the caller's stream continues as if no model had been built
    torch.rand(11)
    b = create_model("cifar_resnet20", num_classes=10, seed=5).state_dict()
    c = create_model("cifar_resnet20", num_classes=10, seed=6).state_dict()
    assert torch.equal(after, expected_next)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_file_hash_is_remembered_but_follows_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"a" * 10)
    assert file_hash(path) == hashlib.sha256(b"a" * 10).hexdigest()[:16]
    assert file_hash(path, 8) == hashlib.sha256(b"a" * 10).hexdigest()[:8]  # the memo keeps the whole digest
    path.write_bytes(b"b" * 11)  # rewritten in place
    assert file_hash(path) == hashlib.sha256(b"b" * 11).hexdigest()[:16]
    other = tmp_path / "new.pt"
    other.write_bytes(b"c" * 11)
    os.replace(other, path)  # same size, replaced atomically (how checkpoints are written)
    assert file_hash(path) == hashlib.sha256(b"c" * 11).hexdigest()[:16]
