"""Unit tests without a database: spec admission, settings from the environment, URLs, keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from structsearch.service.admission import AdmissionError, admit_spec, check_inside_roots
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
