"""Every request's work is bounded (issue 13): admission ceilings, planning in a limited child,
per-key quotas, the body limit and 401 before the body -- through the real app and PostgreSQL."""

from __future__ import annotations

import resource
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from api import create_app
from structsearch.service.apikeys import create_key
from structsearch.service.database import Database
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import KeyScope
from tests.service.conftest import Postgres, make_settings, tiny_spec
from tests.service.synthetic import add_trials

#: Worker processes, heartbeats or time limits: run alone (scripts/test.sh), not beside other tests.
pytestmark = pytest.mark.serial

API = "/api/v1"


def _keys(url: str) -> dict[str, str]:
    db = Database(url)
    tag = uuid.uuid4().hex[:6]
    try:
        return {"user": create_key(db, f"user-{tag}"), "admin": create_key(db, f"admin-{tag}", KeyScope.admin)}
    finally:
        db.dispose()


def _client(settings: ServiceSettings) -> tuple[TestClient, dict[str, str]]:
    return TestClient(create_app(settings)), _keys(settings.database_url)


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    client, keys = _client(settings)
    with client:
        yield client, keys


def _post(client: TestClient, key: str, spec: dict[str, Any]) -> Any:
    return client.post(f"{API}/searches", json=spec, headers={"Authorization": f"Bearer {key}"})


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _stored(postgres: Postgres, url: str) -> tuple[int, int, int]:
    return postgres.count(url, "ss_searches"), postgres.count(url, "studies"), postgres.count(url, "procrastinate_jobs")


HOSTILE: list[tuple[dict[str, Any], str]] = [
    # a ~49 GB classifier: the class count is capped before anything is built
    (tiny_spec(teacher={"model": "resnet50", "kwargs": {"num_classes": 6_000_000}}), "STRUCTSEARCH_MAX_NUM_CLASSES"),
    # allowed kwargs, too many parameters (25M + 205M head): counted on the meta device
    (tiny_spec(teacher={"model": "resnet50", "kwargs": {"num_classes": 100_000}}), "STRUCTSEARCH_MAX_MODEL_PARAMS"),
    (tiny_spec(teacher={"model": "vit_huge_patch14_224", "kwargs": {"num_classes": 10}}), "MAX_MODEL_PARAMS"),
    (tiny_spec(teacher={"model": "cifar_resnet20", "kwargs": {"block_fn": "x"}}), "not an allowed model kwarg"),
    (tiny_spec(measure={"batch_size": 1024}), "STRUCTSEARCH_MAX_MEASURE_BATCH"),
    (tiny_spec(measure={"repeats": 10_000}), "STRUCTSEARCH_MAX_MEASURE_REPEATS"),
    (tiny_spec(measure={"threads": 1024}), "measure.threads"),
    (tiny_spec(proxy={"steps": 1_000_000, "batch_size": 32, "device": "cpu"}), "STRUCTSEARCH_MAX_PROXY_STEPS"),
    (tiny_spec(proxy={"steps": 5, "batch_size": 4096, "device": "cpu"}), "STRUCTSEARCH_MAX_PROXY_BATCH"),
    (tiny_spec(proxy={"steps": 5, "batch_size": 32, "device": "tpu:0"}), "proxy.device"),
    # each inside its own cap (batch 1024, side 1024), a 12 GB input batch together
    (tiny_spec(data={"train": "digits", "input_size": 1024}, proxy={"batch_size": 1024}), "MAX_BATCH_PIXELS"),
    (tiny_spec(teacher={"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1000}), "EPOCHS"),
]


@pytest.mark.parametrize(("spec", "reason"), HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_specs_are_refused_fast_without_memory(
    api: tuple[TestClient, dict[str, str]], settings: ServiceSettings, postgres: Postgres, spec: dict, reason: str
) -> None:
    client, keys = api
    rss, peak = _rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.monotonic()
    r = _post(client, keys["user"], spec)
    elapsed = time.monotonic() - start
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"]
    assert elapsed < 10, elapsed
    assert _rss_mb() - rss < 200
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak < 200
    assert _stored(postgres, settings.database_url) == (0, 0, 0)


def test_imagefolder_size_is_capped(api: tuple[TestClient, dict[str, str]], data_root: Path) -> None:
    client, keys = api
    spec = tiny_spec(data={"train": f"imagefolder:{data_root}?size=60000x60000", "input_size": 8})
    r = _post(client, keys["user"], spec)
    assert r.status_code == 422 and "STRUCTSEARCH_MAX_IMAGE_SIDE" in r.json()["detail"], r.text


def test_planning_runs_in_a_child_with_memory_and_time_limits(
    settings: ServiceSettings, postgres: Postgres, tmp_path: Path, data_root: Path
) -> None:
    """A spec inside every cap whose planning needs more memory or time than allowed is a 422,
    and the API process neither grows nor waits past the limit."""
    resnet50 = tiny_spec(teacher={"model": "resnet50", "kwargs": {"num_classes": 10}}, data={"input_size": 224})
    small = make_settings(settings.database_url, tmp_path / "a", data_root, planning_memory_mb=64)
    client, keys = _client(small)
    with client:
        rss = _rss_mb()
        r = _post(client, keys["user"], resnet50)
        assert r.status_code == 422 and "needs more than 0.0625 GB" in r.json()["detail"], r.text
        assert _rss_mb() - rss < 200
    slow = make_settings(settings.database_url, tmp_path / "a", data_root, planning_timeout_s=0.3)
    client, keys = _client(slow)
    with client:
        start = time.monotonic()
        r = _post(client, keys["user"], resnet50)
        assert r.status_code == 422 and "needs more than 0.3 s" in r.json()["detail"], r.text
        assert time.monotonic() - start < 5
    assert _stored(postgres, settings.database_url) == (0, 0, 0)


def test_quotas_per_key(settings: ServiceSettings, tmp_path: Path, data_root: Path) -> None:
    limited = make_settings(
        settings.database_url, tmp_path / "a", data_root, max_active_searches_per_key=2, max_trial_steps_per_key=50
    )
    client, keys = _client(limited)
    with client:
        first = _post(client, keys["user"], tiny_spec("q1", trials=4, steps=5))  # 20 trial-steps
        assert first.status_code == 202, first.text
        r = _post(client, keys["user"], tiny_spec("q2", trials=8, steps=5))  # 20 + 40 > 50
        assert r.status_code == 429 and "STRUCTSEARCH_MAX_TRIAL_STEPS_PER_KEY" in r.json()["detail"], r.text
        assert _post(client, keys["user"], tiny_spec("q2", trials=4, steps=5)).status_code == 202
        r = _post(client, keys["user"], tiny_spec("q3", trials=1, steps=1))
        assert r.status_code == 429 and "STRUCTSEARCH_MAX_ACTIVE_SEARCHES_PER_KEY=2" in r.json()["detail"], r.text
        assert _post(client, keys["admin"], tiny_spec("q4", trials=20, steps=5)).status_code == 202  # exempt
        cancelled = client.post(
            f"{API}/searches/{first.json()['id']}/cancel", headers={"Authorization": f"Bearer {keys['user']}"}
        )
        assert cancelled.status_code == 200, cancelled.text
        assert _post(client, keys["user"], tiny_spec("q3", trials=1, steps=1)).status_code == 202  # room again


def test_the_trial_steps_quota_counts_only_remaining_trials(
    settings: ServiceSettings, tmp_path: Path, data_root: Path
) -> None:
    """A search that is nearly done holds only its remaining trials' steps; warm-start copies
    (finished trials of an earlier study) are not its progress."""
    limited = make_settings(settings.database_url, tmp_path / "a", data_root, max_trial_steps_per_key=50)
    client, keys = _client(limited)
    with client:
        first = _post(client, keys["user"], tiny_spec("r1", trials=4, steps=5))  # 20 trial-steps
        assert first.status_code == 202, first.text
        study = optuna.load_study(study_name=first.json()["name"], storage=settings.database_url)
        copy = optuna.trial.create_trial(values=[50.0, 1000.0], user_attrs={"copied_from": "older#0"})
        study.add_trials([copy] * 3)
        r = _post(client, keys["user"], tiny_spec("r2", trials=8, steps=5))  # 20 + 40 > 50
        assert r.status_code == 429 and "hold 20;" in r.json()["detail"], r.text
        add_trials(study, 3)  # three of its own four trials finished: 5 + 40 <= 50
        assert _post(client, keys["user"], tiny_spec("r2", trials=8, steps=5)).status_code == 202
        r = _post(client, keys["user"], tiny_spec("r3", trials=1, steps=10))  # 5 + 40 + 10 > 50
        assert r.status_code == 429 and "hold 45;" in r.json()["detail"], r.text


def test_body_limit_and_401_before_the_body(api: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = api
    auth = {"Authorization": f"Bearer {keys['user']}", "Content-Type": "application/json"}
    big = b'{"name": "x", "pad": "' + b"x" * (100 * 1024) + b'"}'
    r = client.post(f"{API}/searches", content=big, headers=auth)
    assert r.status_code == 413 and "STRUCTSEARCH_MAX_BODY_BYTES" in r.json()["detail"], r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"name": "x", "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(f"{API}/searches", content=chunks(), headers=auth)
    assert r.status_code == 413, r.text
    for headers in ({}, {"Authorization": "Bearer ss_not-a-key"}):
        r = client.post(
            f"{API}/searches", content=b"{not json", headers={"Content-Type": "application/json", **headers}
        )
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.text
    r = client.post(f"{API}/searches/00000000-0000-0000-0000-000000000000/cancel")
    assert r.status_code == 401, r.text
    r = client.post(f"{API}/searches", content=b"{not json", headers=auth)  # with a key: the JSON's problem
    assert r.status_code == 422, r.text
