"""The storage URL and its password never leave the server (issue 13): not in a stored error, not in
a response body, not in an unauthenticated probe, not in a 404 of the trials routes.

The failing storage is the test PostgreSQL with a password and a database that does not exist
(the driver's message names the database) or a closed port (it names host and port).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from api import create_app
from api.routes.health import NOT_READY
from structsearch.search.storage import hide_secrets, safe_url
from structsearch.service.database import Database
from structsearch.service.jobs import TrialRunner
from structsearch.service.public_errors import STORAGE_ERROR, WORKER_ERROR, log_error, public_error
from structsearch.service.repository import SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import ApiKey, Search
from tests.service.conftest import make_settings, tiny_spec
from tests.service.synthetic import add_trials
from tests.service.test_api import API, auth, submit

PASSWORD = "pw-Zq81-s3cret"


def failing_urls(good: str) -> dict[str, str]:
    """URLs of the test server that fail, each with a user, a password and parts the driver echoes."""
    u = make_url(good).set(username="structsearch", password=PASSWORD)
    return {
        "no such database": u.set(database=f"ss_missing_{uuid.uuid4().hex[:8]}").render_as_string(False),
        "closed port": u.set(port=1, database="ss_closed_port_db").render_as_string(False),
    }


def leaks(text: str, url: str) -> list[str]:
    """The parts of ``url`` (and the URL itself, with or without its password) found in ``text``."""
    u = make_url(url)
    parts = {PASSWORD, url, safe_url(url), u.database or "", f"{u.host}:{u.port}", f"port {u.port}"}
    return sorted(p for p in parts if p and p in text)


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("failure", ["no such database", "closed port"])
def test_a_worker_whose_storage_fails_stores_no_secret(
    client: TestClient, key: str, settings: ServiceSettings, failure: str
) -> None:
    """The search's row is in the good database; the worker's storage URL is the failing one."""
    bad = failing_urls(settings.database_url)[failure]
    body = submit(client, key, tiny_spec(name="leaky"))
    db = Database(settings.database_url)
    try:
        try:
            TrialRunner(settings.model_copy(update={"database_url": bad}), db).run(body["id"])
        except Exception as e:  # noqa: BLE001 - the job may fail loudly; what it leaves behind is checked
            assert not leaks(str(e), bad)
        with db.session() as s:
            error = SearchRepository(s).get(uuid.UUID(body["id"])).error
    finally:
        db.dispose()
    assert error in (None, STORAGE_ERROR), error
    responses = [
        client.get(body["url"], headers=auth(key)),
        client.get(f"{API}/searches", headers=auth(key)),
        client.get(f"{body['url']}/trials", headers=auth(key)),
    ]
    for r in responses:
        assert r.status_code == 200 and not leaks(r.text, bad), r.text


@pytest.mark.parametrize("failure", ["no such database", "closed port"])
def test_an_api_whose_database_fails_answers_without_secrets(
    settings: ServiceSettings, tmp_path: Path, data_root: Path, failure: str
) -> None:
    bad = failing_urls(settings.database_url)[failure]
    with TestClient(create_app(make_settings(bad, tmp_path / "a", data_root))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"detail": NOT_READY}
        assert "structsearch" not in ready.text and "127.0.0.1" not in ready.text  # no user, no host
        for r in (
            ready,
            c.get(f"{API}/searches", headers=auth("ss_any")),
            c.post(f"{API}/searches", json=tiny_spec(), headers=auth("ss_any")),
            c.get(f"{API}/searches/{uuid.uuid4()}/pareto", headers=auth("ss_any")),
        ):
            assert r.status_code == 503 and not leaks(r.text, bad), r.text


def test_trials_404s_name_no_storage_and_no_server_path(
    client: TestClient, key: str, settings: ServiceSettings, tmp_path: Path
) -> None:
    """A search whose study is missing (its submission failed) must not answer with the storage's
    list of studies, which names other owners' searches; a student off the volume names no path."""
    optuna.create_study(study_name="someone-elses-study", storage=settings.database_url)
    db = Database(settings.database_url)
    sid = uuid.uuid4()
    with db.session() as s:
        owner = s.query(ApiKey.id).filter(ApiKey.name == "tests").scalar()
        row = Search(id=sid, name="never-created", requested_name="never-created", spec={}, status="failed")
        row.trials_requested, row.api_key_id = 1, owner
        SearchRepository(s).add(row)
    db.dispose()
    url = f"{API}/searches/{sid}"
    for path in ("/trials/0/artifact", "/pareto", "/best?budget_flops=1G"):
        r = client.get(url + path, headers=auth(key))
        assert r.status_code == 404 and "someone-elses-study" not in r.text, r.text
        assert "submission failed" in r.json()["detail"]

    body = submit(client, key, tiny_spec(name="paths", baselines=[]))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    elsewhere = tmp_path / "elsewhere-on-the-server"
    add_trials(study, 4, artifacts=elsewhere)  # trained, but their files are off the artifact volume
    r = client.get(f"{body['url']}/trials/0/artifact", headers=auth(key))
    assert r.status_code == 404 and "artifact volume" in r.text, r.text
    assert str(settings.artifacts) not in r.text and str(elsewhere) not in r.text


def test_public_errors_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+psycopg://someone:{PASSWORD}@db.internal:5432/studies"
    raw = RuntimeError(f"could not use {url} (password {PASSWORD})")
    assert public_error(raw) == WORKER_ERROR  # raw text never becomes a client's message
    assert public_error(ValueError(url), "fixed") == "fixed"
    log = logging.getLogger("tests.secrets")
    with caplog.at_level(logging.ERROR, logger="tests.secrets"):
        try:
            raise raw
        except RuntimeError as e:
            log_error(log, "job failed", e, url)
    assert "could not use" in caplog.text and "RuntimeError" in caplog.text  # the operator gets the error
    assert PASSWORD not in caplog.text and "someone:***@db.internal" in caplog.text
    encoded = f"postgresql+psycopg://u:{PASSWORD.replace('-', '%2D')}@h/d"
    assert PASSWORD not in hide_secrets(f"x {PASSWORD} y", encoded)
    assert safe_url("postgresql+psycopg://u:p@h:abc/d") == "<storage URL>"  # unparseable: not shown at all
