"""Who may see what (issue 13): a search is its key's; other keys get the 404 of an unknown id.

Keys A and B are ``user`` keys, ``root`` an ``admin`` key, all against one in-process app on a real
PostgreSQL. Open reads open fronts and bests only; keys expire; warm start stays within an owner.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from api import create_app
from structsearch.cli import app as cli
from structsearch.service.apikeys import TOUCH_EVERY, authenticate, create_key, parse_lifetime
from structsearch.service.database import Database
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import ApiKey, KeyScope, utcnow
from tests.cli_helpers import one_line_error, runner
from tests.service.conftest import make_settings, tiny_spec
from tests.service.synthetic import add_trials
from tests.service.test_api import API, assert_error, auth, submit


@pytest.fixture
def db(settings: ServiceSettings) -> Iterator[Database]:
    d = Database(settings.database_url)
    yield d
    d.dispose()


@pytest.fixture
def keys(db: Database) -> dict[str, str]:
    return {
        "a": create_key(db, "alice"),
        "b": create_key(db, "bob"),
        "root": create_key(db, "root", KeyScope.admin),
    }


@pytest.fixture
def app(settings: ServiceSettings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def a_search(client: TestClient, keys: dict[str, str], settings: ServiceSettings) -> dict:
    """Key A's search, with 12 finished synthetic trials and their dummy students on the volume."""
    body = submit(client, keys["a"], tiny_spec(name="alices", baselines=[]))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    add_trials(study, 12, max_macs=study.user_attrs["max_macs"], artifacts=settings.artifacts)
    body["trained"] = next(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs["trained"])
    return body


def reads(body: dict) -> dict[str, str]:
    """Every GET of one search, by what it shows."""
    url = body["url"]
    return {
        "search": url,
        "trials": f"{url}/trials",
        "artifact": f"{url}/trials/{body['trained']}/artifact",
        "pareto": f"{url}/pareto",
        "best": f"{url}/best?budget_flops=100%25",
    }


def test_another_key_gets_404_on_everything_of_a_search(
    client: TestClient, keys: dict[str, str], a_search: dict
) -> None:
    nobody = str(uuid.uuid4())
    unknown = client.get(f"{API}/searches/{nobody}", headers=auth(keys["b"])).json()
    for what, url in reads(a_search).items():
        r = client.get(url, headers=auth(keys["b"]))
        assert r.status_code == 404, (what, r.text)
        # the answer for an id that does not exist: B cannot tell that A's search exists
        assert r.json() == {"detail": unknown["detail"].replace(nobody, a_search["id"])}, what
        assert client.get(url, headers=auth(keys["a"])).status_code == 200, what
    assert_error(client.post(f"{a_search['url']}/cancel", headers=auth(keys["b"])), 404, "no search with id")
    assert client.get(a_search["url"], headers=auth(keys["a"])).json()["status"] == "queued"  # not cancelled
    r = client.post(f"{a_search['url']}/cancel", headers=auth(keys["a"]))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_lists_show_a_key_its_own_searches_and_admin_all(
    client: TestClient, keys: dict[str, str], a_search: dict
) -> None:
    b_search = submit(client, keys["b"], tiny_spec(name="bobs"))

    def listed(key: str) -> set[str]:
        page = client.get(f"{API}/searches", headers=auth(key)).json()
        assert page["total"] == len(page["items"])
        return {s["id"] for s in page["items"]}

    assert listed(keys["a"]) == {a_search["id"]}
    assert listed(keys["b"]) == {b_search["id"]}
    assert listed(keys["root"]) == {a_search["id"], b_search["id"]}
    for url in reads(a_search).values():  # the admin reads and cancels anyone's
        assert client.get(url, headers=auth(keys["root"])).status_code == 200, url
    r = client.post(f"{b_search['url']}/cancel", headers=auth(keys["root"]))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_closed_reads_by_default_need_a_key_for_everything(
    client: TestClient, keys: dict[str, str], a_search: dict
) -> None:
    assert ServiceSettings.model_fields["open_reads"].default is False
    for url in [*reads(a_search).values(), f"{API}/searches", f"{API}/models"]:
        assert_error(client.get(url), 401, "API key")
        assert_error(client.get(url, headers=auth("ss_not-a-key")), 401, "invalid")
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_open_reads_open_fronts_and_bests_only(
    db_url: str, tmp_path: Path, data_root: Path, client: TestClient, keys: dict[str, str], a_search: dict, settings
) -> None:
    opened = make_settings(db_url, settings.artifacts, data_root, open_reads=True)
    with TestClient(create_app(opened)) as c:
        for who in ({}, auth(keys["b"])):  # nobody, or another user's key
            url = reads(a_search)
            pareto = c.get(url["pareto"], headers=who)
            assert pareto.status_code == 200 and pareto.json()["front"], pareto.text
            assert c.get(url["best"], headers=who).status_code == 200
            for closed in ("search", "trials", "artifact"):
                r = c.get(url[closed], headers=who)
                assert r.status_code == (404 if who else 401), (closed, r.text)
                assert "alices" not in r.text and "spec" not in r.text
        assert_error(c.get(f"{API}/searches"), 401)
        assert_error(c.get(reads(a_search)["pareto"], headers=auth("ss_not-a-key")), 401)  # a key sent is checked
        assert c.get(reads(a_search)["artifact"], headers=auth(keys["a"])).status_code == 200


def test_expired_and_revoked_keys_are_401(client: TestClient, db: Database, keys: dict[str, str]) -> None:
    soon = create_key(db, "temp", lifetime=timedelta(hours=1))
    assert client.get(f"{API}/searches", headers=auth(soon)).status_code == 200
    with db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.name == "temp").values(expires_at=utcnow() - timedelta(seconds=1)))
    for r in (
        client.get(f"{API}/searches", headers=auth(soon)),
        client.post(f"{API}/searches", json=tiny_spec(), headers=auth(soon)),
    ):
        assert_error(r, 401, "expired")


def test_last_use_is_recorded_at_most_once_a_minute(db: Database, keys: dict[str, str]) -> None:
    def last_used() -> object:
        with db.session() as s:
            return s.query(ApiKey.last_used_at).filter(ApiKey.name == "alice").scalar()

    assert last_used() is None
    t0 = utcnow()
    used = authenticate(db, keys["a"], now=t0)
    assert used is not None and used.name == "alice"
    assert last_used() == t0
    authenticate(db, keys["a"], now=t0 + TOUCH_EVERY - timedelta(seconds=1))
    assert last_used() == t0  # within the minute: no write
    later = t0 + TOUCH_EVERY
    authenticate(db, keys["a"], now=later)
    assert last_used() == later


def test_warm_start_only_from_the_owners_studies(client: TestClient, keys: dict[str, str], a_search: dict) -> None:
    """Same teacher, data and proxy (same fingerprint): A's next search starts from A's trials, B's
    from nothing."""
    b_search = submit(client, keys["b"], tiny_spec(name="bob-same-setup", baselines=[]))
    a_again = submit(client, keys["a"], tiny_spec(name="alice-again", baselines=[]))
    copied = {
        who: client.get(body["url"], headers=auth(keys[who])).json()["trials"]["copied"]
        for who, body in (("a", a_again), ("b", b_search))
    }
    assert copied["a"] > 0 and copied["b"] == 0
    trials = client.get(f"{b_search['url']}/trials", headers=auth(keys["b"])).json()
    assert trials["total"] == 0 and "alices" not in json.dumps(trials)


def test_apikey_cli_scope_expiry_and_listing(settings: ServiceSettings, db: Database) -> None:
    url = settings.database_url
    res = runner.invoke(
        cli,
        ["apikey", "create", "--name", "ops", "--admin", "--expires", "30d", "--storage", url],
    )
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    row = authenticate(db, key)
    assert row is not None and row.is_admin and row.expires_at is not None
    assert timedelta(days=29, hours=23) < row.expires_at - utcnow() <= timedelta(days=30)
    res = runner.invoke(
        cli,
        ["apikey", "list", "--format", "json", "--storage", url],
    )
    assert res.exit_code == 0, res.output
    listed = {k["name"]: k for k in json.loads(res.stdout)}
    assert listed["ops"]["scope"] == "admin" and listed["ops"]["expires_at"] and listed["ops"]["last_used_at"]
    assert key not in res.stdout
    one_line_error(["apikey", "create", "--name", "x", "--expires", "soon", "--storage", url], "invalid key lifetime")


@pytest.mark.parametrize(("text", "days"), [("30d", 30), ("2w", 14), ("36h", 1.5), ("90m", 90 / 1440)])
def test_parse_lifetime(text: str, days: float) -> None:
    assert parse_lifetime(text) == timedelta(days=days)
