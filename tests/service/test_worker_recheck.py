"""A worker runs the submit-time checks again when a job starts (issue 13).

A spec is admitted once, at submit; it is run later, maybe much later. By then a data root may
have been removed from the settings, or a folder under a root swapped for a symlink that leads
out of it. The job must fail the search with a one-line error, never read the file.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from structsearch.service.tables import Search
from tests.service.conftest import make_settings, tiny_spec
from tests.service.test_faults import Harness, harness_for


@pytest.fixture
def harness(db_url: str, tmp_path: Path, data_root: Path, service_home: Path) -> Iterator[Harness]:
    yield from harness_for(make_settings(db_url, tmp_path / "artifacts", data_root))


def _outside(tmp_path: Path) -> Path:
    """A file outside every data root; its content is not a dataset, so a read would say so."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "train.npz").write_text("a private file")
    return d


def test_a_job_fails_its_search_when_a_data_path_left_the_roots(
    harness: Harness, data_root: Path, tmp_path: Path
) -> None:
    outside = _outside(tmp_path)
    folder = data_root / "set"
    folder.mkdir()
    (folder / "train.npz").write_text("placeholder")

    # a folder under the root swapped for a symlink to elsewhere after submit
    sid, _ = harness.submit(tiny_spec(name="swapped", data={"train": f"npz:{folder}/train.npz", "input_size": 8}))
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    assert harness.runner().run(sid).startswith("failed: ")
    row = harness.row(sid)
    assert row.status == "failed"
    assert row.error == (
        f"AdmissionError: the stored spec no longer passes this service's checks: data.train: '{folder}/train.npz' "
        f"is outside the allowed data roots ({data_root.resolve()})"
    )

    # the root itself removed from the settings after submit
    folder.unlink()
    folder.mkdir()
    (folder / "train.npz").write_text("placeholder")
    sid, _ = harness.submit(tiny_spec(name="unrooted", data={"train": f"npz:{folder}/train.npz", "input_size": 8}))
    harness.settings = harness.settings.model_copy(update={"data_roots": [outside]})
    assert harness.runner().run(sid).startswith("failed: ")
    error = harness.row(sid).error
    assert "is outside the allowed data roots" in error and "\n" not in error


def test_a_job_fails_its_search_when_the_spec_breaks_a_cap(harness: Harness) -> None:
    # a cap lowered after submit
    sid, _ = harness.submit(tiny_spec(name="lowered", steps=5))
    harness.settings = harness.settings.model_copy(update={"max_proxy_steps": 2})
    assert harness.runner().run(sid).startswith("failed: ")
    assert harness.row(sid).error == (
        "AdmissionError: the stored spec no longer passes this service's checks: "
        "proxy.steps: at most 2 on this service (setting STRUCTSEARCH_MAX_PROXY_STEPS), got 5"
    )

    # a row changed without the API: a measure batch and a device admission would refuse
    harness.settings = harness.settings.model_copy(update={"max_proxy_steps": 20_000})
    sid, _ = harness.submit(tiny_spec(name="edited"))
    with harness.db.session() as s:
        row = s.get(Search, uuid.UUID(sid))
        row.spec = {**row.spec, "measure": {**row.spec["measure"], "batch_size": 512}}
    assert harness.runner().run(sid).startswith("failed: ")
    assert "measure.batch_size: at most 64 on this service" in harness.row(sid).error
    assert {t.state for t in harness.trials("edited")} <= {TrialState.WAITING}  # no trial started
