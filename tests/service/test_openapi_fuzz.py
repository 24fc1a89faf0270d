"""Property-based run over the OpenAPI document (schemathesis): whatever a client sends, the API
answers without a 5xx, and every error is a JSON body with a one-line ``detail`` message.

Requests carry a valid API key (so submission and cancel are exercised past authentication), and
half of the generated search ids are swapped for a real search that has results, so the result
routes run on data and not only on 404s.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from api import create_app
from structsearch.service.apikeys import create_key
from structsearch.service.database import Database
from tests.service.conftest import make_settings, tiny_spec
from tests.service.synthetic import add_trials
from tests.service.test_hostile_sweep import secrets_of

FUZZ: dict[str, Any] = {"key": "", "search": "", "counter": itertools.count(), "secrets": [], "app": None}


@pytest.fixture
def api_schema(db_url: str, tmp_path, data_root) -> Iterator[schemathesis.BaseSchema]:
    # a progress stream of the (never worked) search stays open up to events_max_s: keep each one short
    settings_ = make_settings(db_url, tmp_path / "artifacts", data_root, events_poll_s=0.1, events_max_s=0.3)
    app = create_app(settings_)
    db = Database(db_url)
    FUZZ["key"] = create_key(db, "fuzz")
    FUZZ["secrets"], FUZZ["app"] = secrets_of(settings_), app
    db.dispose()
    with TestClient(app) as client:  # one real search with trials, so some ids resolve
        r = client.post(
            "/api/v1/searches", json=tiny_spec(name="fuzzed"), headers={"Authorization": f"Bearer {FUZZ['key']}"}
        )
        assert r.status_code == 202, r.text
        FUZZ["search"] = r.json()["id"]
        study = optuna.load_study(study_name="fuzzed", storage=db_url)
        add_trials(study, 12, max_macs=study.user_attrs["max_macs"], artifacts=settings_.artifacts)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def operations() -> list[tuple[str, str]]:
    """Every (method, path) of the API, read from an app that is never connected."""
    doc = create_app(
        make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none", Path("/nonexistent"), Path("/nonexistent"))
    ).openapi()
    return [(m.upper(), path) for path, ops in doc["paths"].items() for m in ops]


def json_error_body(response) -> None:
    if response.status_code < 400:
        return
    body = response.json()  # raises when the body is not JSON
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"].strip(), body
    assert "\n" not in body["detail"], body


# schemathesis' own pytest plugin does not run under pytest 9; drive its strategies with Hypothesis.
@pytest.mark.parametrize(("method", "path"), operations())
def test_no_server_errors_and_json_error_bodies(api_schema: schemathesis.BaseSchema, method: str, path: str) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {FUZZ['key']}"}
    counts = {"requests": 0, "4xx": 0, "5xx": 0, "secrets": 0, "down": 0}

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case: schemathesis.Case) -> None:
        if "search_id" in case.path_parameters and next(FUZZ["counter"]) % 2 == 0:
            case.path_parameters["search_id"] = FUZZ["search"]
        response = case.call(headers=headers)
        counts["requests"] += 1
        counts["4xx"] += 400 <= response.status_code < 500
        counts["5xx"] += response.status_code >= 500
        counts["secrets"] += any(secret in response.text for secret in FUZZ["secrets"])
        case.validate_response(response, checks=[not_a_server_error], headers=headers)
        json_error_body(response)
        if case.path_parameters.get("search_id") not in (None, FUZZ["search"]):
            assert response.status_code in (404, 422), f"unknown search id answered {response.status_code}"

    check()
    counts["down"] = int(TestClient(FUZZ["app"]).get("/healthz").status_code != 200)
    print(f"openapi fuzz {method} {path}:", counts)  # summed by bench/results.py's reliability stage
    assert counts["secrets"] == counts["down"] == 0
