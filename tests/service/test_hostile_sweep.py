"""A sweep of hostile submissions and reads (issue 13): every one gets a 4xx with a one-line JSON
``detail``, none leaks a secret or a stack trace, and the API process keeps answering.

The hand-written list complements ``test_openapi_fuzz.py`` (schemathesis over the OpenAPI schema):
these are the inputs an attacker or a careless script would send on purpose.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from api import create_app
from structsearch.service.apikeys import create_key
from structsearch.service.database import Database
from structsearch.service.settings import ServiceSettings
from tests.service.conftest import tiny_spec

API = "/api/v1"


def _with(**changes: Any) -> dict[str, Any]:
    return tiny_spec(**changes)


def _data(**changes: Any) -> dict[str, Any]:
    return tiny_spec(data={"train": "digits", "val_size": 0.2, "input_size": 8, **changes})


#: (label, raw request body) -- JSON specs are dumped; strings are sent as they are.
HOSTILE_BODIES: list[tuple[str, Any]] = [
    ("empty object", {}),
    ("array", []),
    ("bare string", "spec"),
    ("null", None),
    ("not JSON", "{'name': 1"),
    ("deep nesting", "[" * 20_000 + "]" * 20_000),
    ("huge name", _with(name="x" * 10_000)),
    ("path traversal name", _with(name="../../etc/passwd")),
    ("SQL in name", _with(name="x'; DROP TABLE ss_searches;--")),
    ("negative trials", _with(trials=-1)),
    ("astronomic trials", _with(trials=10**12)),
    ("trials as text", _with(trials="many")),
    ("budget in MB", _with(budget={"flops": "300MB"})),
    ("negative budget", _with(budget={"flops": "-1"})),
    ("zero budget", _with(budget={"flops": "0%"})),
    ("overflowing budget", _with(budget={"flops": "1e400"})),
    ("budget as a number", _with(budget={"flops": 300})),
    ("unknown teacher", _with(teacher={"model": "no_such_model_at_all"})),
    ("teacher name traversal", _with(teacher={"model": "../../x"})),
    ("checkpoint outside the roots", _with(teacher={"model": "cifar_resnet20", "checkpoint": "/etc/passwd"})),
    ("checkpoint URL", _with(teacher={"model": "cifar_resnet20", "checkpoint": "file:///etc/shadow"})),
    ("npz outside the roots", _data(train="npz:/etc/passwd")),
    ("imagefolder at /", _data(train="imagefolder:/")),
    ("torchvision download", _data(train="torchvision:CIFAR10:/tmp/x?download=1")),
    ("giant synthetic set", _data(train="synthetic:100000000")),
    ("giant input size", _data(input_size=100_000)),
    ("negative proxy lr", _with(proxy={"steps": 5, "batch_size": 32, "device": "cpu", "lr": -5})),
    ("zero proxy steps", _with(proxy={"steps": 0, "batch_size": 32, "device": "cpu"})),
    ("unknown optimizer", _with(proxy={"steps": 5, "batch_size": 32, "device": "cpu", "optimizer": "evil"})),
    ("unknown objective", _with(objectives=["accuracy", "joules"])),
    ("shell in sampler", _with(sampler="tpe; rm -rf /")),
    ("huge seed", _with(seed=2**80)),
    ("unknown field", _with(evil=1)),
    ("unknown baseline", _with(baselines=["nope"])),
    ("negative num_classes", _with(teacher={"model": "cifar_resnet20", "kwargs": {"num_classes": -5}})),
    ("malformed device", _with(proxy={"steps": 5, "batch_size": 32, "device": "cuda:abc"})),
]

#: (label, method, path) reads and writes aimed at ids, pages and artifacts that are not there.
HOSTILE_PATHS: list[tuple[str, str, str]] = [
    ("not a uuid", "GET", f"{API}/searches/not-a-uuid"),
    ("unknown uuid", "GET", f"{API}/searches/{uuid.UUID(int=1)}"),
    ("negative offset", "GET", f"{API}/searches?offset=-1"),
    ("huge limit", "GET", f"{API}/searches?limit=1000000000"),
    ("traversal in trial", "GET", f"{API}/searches/{uuid.UUID(int=1)}/trials/..%2F..%2Fetc%2Fpasswd/artifact"),
    ("huge trial number", "GET", f"{API}/searches/{uuid.UUID(int=1)}/trials/99999999999999999999/artifact"),
    ("bad budget query", "GET", f"{API}/searches/{uuid.UUID(int=1)}/best?budget_flops=lots"),
    ("cancel unknown", "POST", f"{API}/searches/{uuid.UUID(int=1)}/cancel"),
]


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[tuple[TestClient, str]]:
    db = Database(settings.database_url)
    try:
        key = create_key(db, f"sweep-{uuid.uuid4().hex[:6]}")
    finally:
        db.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, key


def secrets_of(settings: ServiceSettings) -> list[str]:
    """What no response may contain: a stack trace, the database URL, host:port or password."""
    url = make_url(settings.database_url)
    found = ["Traceback", 'File "/', settings.database_url, f"{url.host}:{url.port}"]
    return found + ([url.password] if url.password else [])


def test_hostile_requests_get_a_4xx_leak_nothing_and_leave_the_api_up(
    api: tuple[TestClient, str], settings: ServiceSettings
) -> None:
    client, key = api
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    secrets = secrets_of(settings)
    counts = {"requests": 0, "4xx": 0, "5xx": 0, "secrets": 0, "down": 0}
    problems = []
    requests = [("POST", f"{API}/searches", label, body) for label, body in HOSTILE_BODIES]
    requests += [(method, path, label, None) for label, method, path in HOSTILE_PATHS]
    for method, path, label, body in requests:
        content = body if isinstance(body, str) else json.dumps(body) if body is not None or method == "POST" else None
        r = client.request(method, path, content=content, headers=auth)
        counts["requests"] += 1
        counts["4xx"] += 400 <= r.status_code < 500
        counts["5xx"] += r.status_code >= 500
        leaked = [s for s in secrets if s and s in r.text]
        counts["secrets"] += bool(leaked)
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
        if not 400 <= r.status_code < 500 or leaked or not isinstance(detail, str) or "\n" in detail:
            problems.append(f"{label}: {r.status_code} {r.text[:200]}")
        counts["down"] += client.get("/healthz").status_code != 200
    print("hostile sweep:", counts)  # read by bench/results.py's reliability stage
    assert counts["requests"] == len(HOSTILE_BODIES) + len(HOSTILE_PATHS) >= 40
    assert not problems, problems
    assert counts["5xx"] == counts["secrets"] == counts["down"] == 0
