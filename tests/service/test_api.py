"""The REST API in-process against a real PostgreSQL: auth, validation, pagination, 404s, results.

No workers here: searches stay queued, and results come from trials written straight into the
study (tests/service/synthetic.py). The multi-process behaviour is in test_e2e.py.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.pool import Pool

from api import create_app
from api.routes.health import NOT_READY
from structsearch.errors import BudgetError, CancelRefused, NotFound, StructsearchError, SubmitFailed
from structsearch.search import best_under_budget, pareto_front, study_records
from structsearch.search.recheck import RECHECK_ATTR, RecheckEntry, RecheckResult
from structsearch.search.storage import open_storage
from structsearch.service.database import Database
from structsearch.service.jobs import TrialRunner
from structsearch.service.settings import ServiceSettings
from tests.service.conftest import Postgres, make_settings, tiny_spec
from tests.service.synthetic import add_trials, record

API = "/api/v1"


@pytest.fixture
def app(settings: ServiceSettings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI, key: str) -> Iterator[TestClient]:
    """A client that sends the `key` fixture's key (reads need one by default)."""
    with TestClient(app, headers=auth(key)) as c:
        yield c


@pytest.fixture
def anon(app: FastAPI, client: TestClient) -> TestClient:
    """A client of the same app that sends no key (the app's lifespan is `client`'s)."""
    return TestClient(app)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r, status: int, *fragments: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], body
    for f in fragments:
        assert f in body["detail"], body["detail"]


def stored(postgres: Postgres, url: str) -> tuple[int, int, int]:
    """(searches, Optuna studies, queued jobs): all zero after a rejected submission."""
    return postgres.count(url, "ss_searches"), postgres.count(url, "studies"), postgres.count(url, "procrastinate_jobs")


def submit(client: TestClient, key: str, spec: dict) -> dict:
    r = client.post(f"{API}/searches", json=spec, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()


# -- health -------------------------------------------------------------------------------------


def test_health_and_readiness(anon: TestClient) -> None:
    assert anon.get("/healthz").json() == {"status": "ok", "database": None, "schema_revision": None}
    r = anon.get("/readyz")
    assert r.status_code == 200 and r.json()["schema_revision"] == "0007"


def test_readyz_reports_an_unmigrated_database(postgres: Postgres, tmp_path: Path, data_root: Path) -> None:
    name = f"ss_empty_{uuid.uuid4().hex[:8]}"
    url = postgres.create(name)
    try:
        with TestClient(create_app(make_settings(url, tmp_path / "a", data_root))) as c:
            r = c.get("/readyz")
            assert_error(r, 503)
            assert r.json() == {"detail": NOT_READY}  # why (the schema revision) is in the server log
            assert c.get("/healthz").status_code == 200
    finally:
        postgres.drop(name)


def test_models(client: TestClient) -> None:
    """Every registered family, paginated: more families than one default page of 20."""
    from structsearch.space import list_families

    names = {f.name for f in list_families()}
    first = client.get(f"{API}/models").json()
    assert first["total"] == len(names) > first["limit"] == len(first["items"]) == 20
    rest = client.get(f"{API}/models", params={"offset": 20}).json()
    assert {f["family"] for f in first["items"] + rest["items"]} == names


# -- auth -------------------------------------------------------------------------------------


def test_submit_and_cancel_need_a_valid_key(
    client: TestClient, anon: TestClient, key: str, settings, postgres: Postgres
) -> None:
    r = anon.post(f"{API}/searches", json=tiny_spec())
    assert_error(r, 401, "Authorization: Bearer")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(client.post(f"{API}/searches", json=tiny_spec(), headers=auth("ss_wrong")), 401, "invalid")
    assert_error(client.post(f"{API}/searches", json=tiny_spec(), headers={"Authorization": "Basic eDp5"}), 401)
    assert stored(postgres, settings.database_url) == (0, 0, 0)
    sid = submit(client, key, tiny_spec())["id"]
    assert_error(anon.post(f"{API}/searches/{sid}/cancel"), 401)
    assert_error(client.post(f"{API}/searches/{sid}/cancel", headers=auth(key + "x")), 401)


def test_revoked_key_stops_working(client: TestClient, key: str, settings) -> None:
    from structsearch.service.repository import ApiKeyRepository

    db = Database(settings.database_url)
    with db.session() as s:
        assert ApiKeyRepository(s).revoke("tests")
    db.dispose()
    assert_error(client.post(f"{API}/searches", json=tiny_spec(), headers=auth(key)), 401, "revoked")


def test_closed_reads_need_a_key(db_url: str, tmp_path: Path, data_root: Path, key: str) -> None:
    with TestClient(create_app(make_settings(db_url, tmp_path / "a", data_root, open_reads=False))) as c:
        assert_error(c.get(f"{API}/searches"), 401)
        assert_error(c.get(f"{API}/models"), 401)
        assert c.get(f"{API}/searches", headers=auth(key)).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes never need a key


# -- submission -------------------------------------------------------------------------------


def test_submit_queues_one_job_per_trial(client: TestClient, key: str, settings, postgres: Postgres) -> None:
    r = client.post(f"{API}/searches", json=tiny_spec(trials=5), headers=auth(key))
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued" and body["name"] == "tiny" and not body["renamed"]
    assert r.headers["location"] == f"{API}/searches/{body['id']}" == body["url"]
    assert stored(postgres, settings.database_url) == (1, 1, 5)
    detail = client.get(body["url"]).json()
    assert detail["status"] == "queued" and detail["trials"]["requested"] == 5 and detail["trials"]["complete"] == 0
    assert detail["best"] is None and detail["spec"]["name"] == "tiny"


def test_a_taken_name_gets_a_suffix(client: TestClient, key: str) -> None:
    first = submit(client, key, tiny_spec(name="same"))
    second = submit(client, key, tiny_spec(name="same"))
    assert first["name"] == "same" and second["requested_name"] == "same"
    assert second["renamed"] and second["name"] == f"same-{uuid.UUID(second['id']).hex[:6]}"
    assert "was taken" in second["message"]


def test_a_name_used_by_a_cli_study_is_not_reused(client: TestClient, key: str, settings) -> None:
    optuna.create_study(study_name="from-cli", storage=settings.database_url)
    assert submit(client, key, tiny_spec(name="from-cli"))["renamed"]


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"teacher": {"model": "no_such_net"}}, ("no_such_net",)),
        ({"budget": {"flops": "1k"}}, ("below the smallest student",)),
        ({"budget": {"flops": "300MB"}}, ("300MB",)),
        ({"trials": 0}, ("trials",)),
        ({"trials": 51}, ("at most 50",)),
        ({"data": {"train": "npz:/etc/passwd"}}, ("outside the allowed data roots",)),
        ({"data": {"train": "npz:relative/x.npz"}}, ("absolute",)),
        ({"data": {"train": "torchvision:CIFAR10:{root}?download=1"}}, ("downloads are not allowed",)),
        ({"teacher": {"model": "cifar_resnet20", "checkpoint": "{root}/../../etc/x.pt"}}, ("outside",)),
        ({"teacher": {"model": "cifar_resnet20", "kwargs": {"pretrained": True}}}, ("pretrained",)),
        ({"teacher": {"model": "cifar_resnet20", "kwargs": {"x": {"nested": 1}}}}, ("only numbers",)),
        ({"unknown_field": 1}, ("unknown_field",)),
        ({"data": {"train": "synthetic:100000?iters=2000", "input_size": 8}}, ("synthetic images", "limit")),
    ],
)
def test_rejected_specs_store_nothing(
    client: TestClient,
    key: str,
    settings,
    postgres: Postgres,
    data_root: Path,
    change: dict,
    fragments: tuple[str, ...],
) -> None:
    spec = tiny_spec()
    for k, v in change.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            v = {kk: (vv.replace("{root}", str(data_root)) if isinstance(vv, str) else vv) for kk, vv in v.items()}
        spec[k] = v
    assert_error(client.post(f"{API}/searches", json=spec, headers=auth(key)), 422, *fragments)
    assert stored(postgres, settings.database_url) == (0, 0, 0)


def test_a_checkpoint_inside_the_roots_passes_the_path_check(client: TestClient, key: str, data_root: Path) -> None:
    # inside the root, so the path check passes; the file does not exist, which plan_search reports
    spec = tiny_spec(teacher={"model": "cifar_resnet20", "checkpoint": str(data_root / "missing.pt")})
    assert_error(client.post(f"{API}/searches", json=spec, headers=auth(key)), 422, "checkpoint not found")


@pytest.mark.parametrize("body", ["not json", "[1, 2]", "null", '"a string"'])
def test_malformed_bodies_are_422(client: TestClient, key: str, body: str) -> None:
    r = client.post(f"{API}/searches", content=body, headers={**auth(key), "content-type": "application/json"})
    assert_error(r, 422)


# -- reading ----------------------------------------------------------------------------------


def test_pagination(client: TestClient, key: str) -> None:
    ids = [submit(client, key, tiny_spec(name=f"p{i}"))["id"] for i in range(3)]
    page = client.get(f"{API}/searches", params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [s["id"] for s in page["items"]] == ids[::-1][:2]  # newest first
    rest = client.get(f"{API}/searches", params={"limit": 2, "offset": 2}).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]]
    assert client.get(f"{API}/searches", params={"offset": 10}).json()["items"] == []
    assert client.get(f"{API}/searches", params={"status": "queued"}).json()["total"] == 3
    assert client.get(f"{API}/searches", params={"status": "done"}).json()["total"] == 0
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}, {"status": "nope"}):
        assert_error(client.get(f"{API}/searches", params=bad), 422)


@pytest.mark.parametrize(
    "path",
    ["", "/trials", "/pareto", "/best?budget_flops=1M", "/trials/0/artifact"],
)
def test_unknown_ids_are_404(client: TestClient, path: str) -> None:
    for sid in (str(uuid.uuid4()), "not-a-uuid", "0"):
        assert_error(client.get(f"{API}/searches/{sid}{path}"), 404, "no search")


def test_unknown_search_cancel_is_404(client: TestClient, key: str) -> None:
    assert_error(client.post(f"{API}/searches/{uuid.uuid4()}/cancel", headers=auth(key)), 404)


@pytest.fixture
def search_with_results(client: TestClient, key: str, settings) -> tuple[dict, optuna.Study]:
    """A submitted search whose study holds 40 synthetic finished trials (some over budget)."""
    body = submit(client, key, tiny_spec(name="results", baselines=[]))  # synthetic trials from number 0
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    add_trials(study, 40, max_macs=study.user_attrs["max_macs"], artifacts=settings.artifacts)
    return body, study


def test_pareto_and_best_match_the_library(client: TestClient, search_with_results, settings) -> None:
    body, study = search_with_results
    url = body["url"]
    records = study_records(study)
    for cost in ("macs", "params"):
        got = client.get(f"{url}/pareto", params={"cost": cost}).json()
        assert got["front"] == [r.to_dict() for r in pareto_front(records, cost)] and got["front"]
    budget = str(study.user_attrs["max_macs"])
    got = client.get(f"{url}/best", params={"budget_flops": budget, "budget_params": "250k"}).json()
    want = best_under_budget(budget, "250k", study=study.study_name, storage_url=settings.database_url)
    assert got == want.to_dict()
    detail = client.get(url).json()
    assert (
        detail["best"]
        == best_under_budget(budget, None, study=study.study_name, storage_url=settings.database_url).to_dict()
    )
    # a stored `structsearch recheck` shows on the front, as `structsearch pareto --format json` shows it
    assert client.get(f"{url}/pareto").json()["recheck"] == []
    entries = (RecheckEntry(0, "front", 1000, 80.0, 85.0, 1.0), RecheckEntry(1, "random", 900, 70.0, 72.5, 1.0))
    check = RecheckResult(study.study_name, 40, 10, 1, entries, 1.0, 1.0, 1.0, True, True)
    study.set_user_attr(RECHECK_ATTR, {"40": check.to_dict()})
    assert client.get(f"{url}/pareto").json()["recheck"] == [{k: v for k, v in check.to_dict().items() if k != "study"}]
    assert detail["trials"]["copied"] == 0 and detail["trials"]["complete"] == 40


def test_baselines_are_enqueued_and_flagged(client: TestClient, key: str, settings) -> None:
    """A submitted search holds its baselines as its first (waiting) trials; the API names them."""
    body = submit(client, key, tiny_spec(name="with-baselines"))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    assert [t.user_attrs.get("baseline") for t in study.get_trials()] == ["uniform", "global_magnitude", "depth"]
    items = client.get(f"{body['url']}/trials", params={"state": "waiting"}).json()["items"]
    assert [t["baseline"] for t in items] == ["uniform", "global_magnitude", "depth"]
    gains = client.get(f"{body['url']}/pareto").json()["baselines"]
    assert gains == []  # nothing finished yet: the front and the gains come from finished trials


def test_best_errors(client: TestClient, search_with_results) -> None:
    url = search_with_results[0]["url"]
    assert_error(client.get(f"{url}/best", params={"budget_flops": "300MB"}), 422, "300MB")
    assert_error(client.get(f"{url}/best", params={"budget_params": "lots"}), 422, "lots")
    assert_error(client.get(f"{url}/best"), 422, "budget_flops")
    assert_error(client.get(f"{url}/best", params={"budget_flops": "1k"}), 404, "no stored candidate within")
    assert_error(client.get(f"{url}/pareto", params={"cost": "joules"}), 422)


def test_latency_and_memory_fronts_and_budgets_match_the_library(client: TestClient, key: str, settings) -> None:
    body = submit(client, key, tiny_spec(name="measured", baselines=[]))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    add_trials(study, 30, max_macs=study.user_attrs["max_macs"], measured=True)
    url, records = body["url"], study_records(study)
    for cost in ("latency", "memory"):
        got = client.get(f"{url}/pareto", params={"cost": cost}).json()
        assert (
            got["cost"] == cost and got["front"] == [r.to_dict() for r in pareto_front(records, cost)] and got["front"]
        )
        assert all(c["latency_device"] and c["memory_device"] and c["resolution"] for c in got["front"])
    got = client.get(f"{url}/best", params={"budget_latency": "10ms", "budget_memory": "2MB"}).json()
    want = best_under_budget(
        study=study.study_name, storage_url=settings.database_url, budget_latency="10ms", budget_memory="2MB"
    )
    assert got == want.to_dict() and got["latency_ms"] <= 10 and got["memory_bytes"] <= 2_000_000
    assert_error(client.get(f"{url}/best", params={"budget_memory": "50M"}), 422, "invalid memory budget '50M'")
    assert_error(client.get(f"{url}/best", params={"budget_latency": "5"}), 422, "no unit")
    assert_error(client.get(f"{url}/best", params={"budget_latency": "1ns"}), 404, "no stored candidate within")


def test_best_before_any_result_is_404(client: TestClient, key: str) -> None:
    url = submit(client, key, tiny_spec())["url"]
    assert_error(client.get(f"{url}/best", params={"budget_flops": "1G"}), 404, "no trained candidates")
    assert client.get(f"{url}/pareto").json()["front"] == []


def test_results_follow_new_trials(client: TestClient, search_with_results) -> None:
    """A trial the worker recorded shows up at once (the read model, no cache in between)."""
    body, study = search_with_results
    before = client.get(f"{body['url']}/pareto").json()["front"]
    cheapest = min(r["macs"] for r in before)
    study.add_trial(
        optuna.trial.create_trial(
            values=[100.0, float(cheapest - 1)],
            user_attrs={
                "macs": cheapest - 1,
                "params": 1,
                "trained": True,
                "score": 100.0,
                "spec": {},
                "spec_key": "z",
            },
            system_attrs={"constraints:flops": -1.0},
        )
    )
    record(study)  # what the worker that finished it does
    after = client.get(f"{body['url']}/pareto").json()["front"]
    assert after[0]["score"] == 100.0 and len(after) == 1  # dominates everything
    assert client.get(body["url"]).json()["trials"]["complete"] == 41


def test_the_writer_keeps_each_front_and_a_read_computes_none(
    client: TestClient, key: str, settings: ServiceSettings
) -> None:
    """The read model's writer keeps every front in ss_fronts as it writes trials: after each
    batch, before any read, each kept front is the library's. A read then only reads it: a row
    made to dominate everything behind the writer's back (no write, so no front moved) does not
    show, where a reader computing the front would put it first."""
    from sqlalchemy import select, update

    from structsearch.service.tables import FrontRow, TrialRow

    body = submit(client, key, tiny_spec(name="folded", baselines=[]))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    sid, db = uuid.UUID(body["id"]), Database(settings.database_url)

    def kept() -> dict[str, list[int]]:
        with db.session() as s:
            return {f.cost: f.numbers for f in s.scalars(select(FrontRow).where(FrontRow.search_id == sid))}

    try:
        for seed in range(3):
            add_trials(study, 25, max_macs=study.user_attrs["max_macs"], seed=seed, measured=True)
            records = study_records(study)
            fronts = {
                cost: [r.trial for r in pareto_front(records, cost)] for cost in ("macs", "params", "latency", "memory")
            }
            assert kept() == fronts and all(fronts.values())
        with db.session() as s:
            off_front = s.scalar(
                select(TrialRow.number)
                .where(TrialRow.search_id == sid, TrialRow.number.not_in(fronts["macs"]))
                .limit(1)
            )
            s.execute(
                update(TrialRow)
                .where(TrialRow.search_id == sid, TrialRow.number == off_front)
                .values(score=100.0, macs=1, params=1, latency_ms=0.001, memory_bytes=1, scored=True, feasible=True)
            )
        for cost, numbers in fronts.items():
            got = client.get(f"{body['url']}/pareto", params={"cost": cost}).json()["front"]
            assert [c["trial"] for c in got] == numbers
            assert got == [r.to_dict() for r in pareto_front(records, cost)]
    finally:
        db.dispose()


def test_a_search_without_kept_fronts_gets_them_on_first_read(
    client: TestClient, search_with_results, settings: ServiceSettings
) -> None:
    """Rows written before the writer kept fronts (migration 0006 drops the old ones): the first
    reads, concurrent, compute and keep them, and each answers the library's front."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import delete, func, select

    from structsearch.service.tables import FrontRow

    body, study = search_with_results
    db = Database(settings.database_url)
    try:
        with db.session() as s:
            s.execute(delete(FrontRow))
        with ThreadPoolExecutor(8) as pool:
            fronts = list(pool.map(lambda _: client.get(f"{body['url']}/pareto").json()["front"], range(8)))
        want = [r.to_dict() for r in pareto_front(study_records(study))]
        assert all(f == want for f in fronts) and want
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(FrontRow)) == 4
    finally:
        db.dispose()


def test_a_fresh_process_compiles_its_reads_at_startup(search_with_results, key: str, settings) -> None:
    """A new API process (its own engine and statement cache) has every statement of the read
    endpoints compiled by its startup: its first requests compile none (they took several times
    the later ones' latency), and what it imported is frozen out of the garbage collector's walks."""
    import gc

    from sqlalchemy.engine.interfaces import CacheStats

    body, study = search_with_results
    app = create_app(settings)
    misses: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if context.cache_hit is CacheStats.CACHE_MISS:
            misses.append(statement)

    engine = app.state.services.db.engine
    with TestClient(app, headers=auth(key)) as c:
        event.listen(engine, "after_cursor_execute", seen)
        try:
            assert gc.get_freeze_count() > 0
            url = body["url"]
            for path in (
                f"{url}/pareto",
                f"{url}/best?budget_flops={study.user_attrs['max_macs']}&budget_params=250k",
                f"{url}/trials?limit=100&after=3",
                url,
                f"{API}/searches?limit=100",
            ):
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
        finally:
            event.remove(engine, "after_cursor_execute", seen)
    assert misses == []


def test_search_bodies_are_the_models_bytes(client: TestClient, key: str, settings: ServiceSettings) -> None:
    """The list and a search's summary build their bodies from rows (the search's columns and
    its best trial's, one statement) without a model per row: the bytes are those of the
    ``SearchPublic`` models built from the ORM rows and the best trial's record."""
    from pydantic import TypeAdapter
    from sqlalchemy import select

    from api.schemas import CandidatePublic, Page, SearchPublic, SearchStatusName, TrialCountsPublic
    from structsearch.service.readmodel import record_from_row
    from structsearch.service.tables import Search, TrialRow

    submit(client, key, tiny_spec(name="no-trials-yet", baselines=[]))  # first: nothing to warm-start from
    scored = submit(client, key, tiny_spec(name="with-best", baselines=[]))
    study = optuna.load_study(study_name=scored["name"], storage=settings.database_url)
    add_trials(study, 12, max_macs=study.user_attrs["max_macs"])
    record(study)
    db = Database(settings.database_url)
    try:
        with db.session() as s:
            items = []
            for row in s.scalars(select(Search).order_by(Search.created_at.desc(), Search.id)):
                best = s.get(TrialRow, (row.id, row.best_number)) if row.best_number is not None else None
                items.append(
                    SearchPublic(
                        id=row.id,
                        name=row.name,
                        requested_name=row.requested_name,
                        status=SearchStatusName(row.status),
                        error=row.error,
                        warnings=row.warnings,
                        teacher_score=row.teacher_score,
                        created_at=row.created_at,
                        updated_at=row.updated_at,
                        spec=row.spec,
                        trials=TrialCountsPublic(
                            requested=row.trials_requested,
                            complete=row.n_own_complete,
                            pruned=row.n_pruned,
                            running=row.n_running,
                            waiting=row.n_waiting,
                            failed=row.n_failed,
                            trained=row.n_trained,
                            over_budget=row.n_over_budget,
                            copied=row.n_copied,
                        ),
                        best=CandidatePublic(**record_from_row(row.name, best).to_dict()) if best else None,
                    )
                )
    finally:
        db.dispose()
    assert items[0].best is not None and items[0].trials.complete == 12 and items[1].best is None
    got = client.get(f"{API}/searches", params={"limit": 100})
    page = Page[SearchPublic](items=items, total=2, offset=0, limit=100)
    assert got.status_code == 200 and got.content == TypeAdapter(Page[SearchPublic]).dump_json(page)
    for item in items:
        one = client.get(f"{API}/searches/{item.id}")
        assert one.status_code == 200 and one.content == item.model_dump_json().encode()


def test_trial_pages_are_the_models_bytes_and_map50_is_shown_with_scores(
    client: TestClient, key: str, settings: ServiceSettings
) -> None:
    """/trials builds its body from the rows without a model per row: the bytes are those of
    Page[TrialPublic] built from the records. A detection trial's mAP@.5 (``map50``) is in the
    read model and beside its score in /trials, /best and /pareto; classification trials have null."""
    from pydantic import TypeAdapter
    from sqlalchemy import select

    from api.schemas import Page, TrialPublic
    from structsearch.service.readmodel import record_from_row
    from structsearch.service.tables import TrialRow

    body = submit(client, key, tiny_spec(name="map50", baselines=[]))
    study = optuna.load_study(study_name=body["name"], storage=settings.database_url)
    add_trials(study, 12, max_macs=study.user_attrs["max_macs"])
    attrs = {"macs": 1000, "params": 10, "trained": True, "score": 41.5, "map50": 62.25, "spec": {}, "spec_key": "d"}
    study.add_trial(
        optuna.trial.create_trial(values=[41.5, 1000.0], user_attrs=attrs, system_attrs={"constraints:flops": -1.0})
    )
    record(study)
    got = client.get(f"{body['url']}/trials", params={"limit": 100})
    db = Database(settings.database_url)
    try:
        with db.session() as s:
            rows = s.scalars(
                select(TrialRow).where(TrialRow.search_id == uuid.UUID(body["id"])).order_by(TrialRow.number)
            )
            items = [
                TrialPublic(
                    **record_from_row(body["name"], r).to_dict(),
                    duplicate_of=r.duplicate_of,
                    copied_from=r.copied_from,
                    started_at=r.started_at,
                    completed_at=r.completed_at,
                )
                for r in rows
            ]
    finally:
        db.dispose()
    page = Page[TrialPublic](items=items, total=13, offset=0, limit=100, next=None)
    assert got.status_code == 200 and got.content == TypeAdapter(Page[TrialPublic]).dump_json(page)
    assert [t["map50"] for t in got.json()["items"]] == [None] * 12 + [62.25]
    best = client.get(f"{body['url']}/best", params={"budget_flops": "1000"}).json()
    assert (
        best["trial"] == 12
        and best["map50"] == 62.25
        and best == best_under_budget("1000", None, study=body["name"], storage_url=settings.database_url).to_dict()
    )
    front = client.get(f"{body['url']}/pareto").json()["front"]
    assert front[0]["trial"] == 12 and front[0]["map50"] == 62.25 and all(c["map50"] is None for c in front[1:])


def test_trials_pagination_and_state_filter(client: TestClient, search_with_results) -> None:
    body, study = search_with_results
    url = f"{body['url']}/trials"
    page = client.get(url, params={"limit": 15, "offset": 30}).json()
    assert page["total"] == 40 and [t["trial"] for t in page["items"]] == list(range(30, 40))
    assert client.get(url, params={"state": "complete"}).json()["total"] == 40
    assert client.get(url, params={"state": "running"}).json()["total"] == 0
    running = study.ask()  # a live trial appears with state running (once a worker records it)
    record(study)
    assert [t["trial"] for t in client.get(url, params={"state": "running"}).json()["items"]] == [running.number]
    assert client.get(url).json()["total"] == 41
    assert_error(client.get(url, params={"state": "exploded"}), 422)


def test_artifact_download(client: TestClient, search_with_results, settings, tmp_path: Path) -> None:
    body, study = search_with_results
    trials = study.get_trials(deepcopy=False)
    trained = next(t for t in trials if t.user_attrs["trained"])
    r = client.get(f"{body['url']}/trials/{trained.number}/artifact")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert {"student.pt", "spec.json", "trial.json"} <= names
    untrained = next(t for t in trials if not t.user_attrs["trained"])
    assert_error(client.get(f"{body['url']}/trials/{untrained.number}/artifact"), 404, "not trained")
    assert_error(client.get(f"{body['url']}/trials/9999/artifact"), 404, "no trial 9999")
    # a trial whose recorded artifact lies outside the artifact volume is never served
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "student.pt").write_bytes(b"x")
    (outside / "spec.json").write_text("{}")
    study.add_trial(
        optuna.trial.create_trial(
            values=[50.0, 1000.0],
            user_attrs={
                "macs": 1000,
                "params": 10,
                "trained": True,
                "score": 50.0,
                "spec": {"model": "cifar_resnet20"},
                "artifact": str(outside),
            },
        )
    )
    assert_error(client.get(f"{body['url']}/trials/40/artifact"), 404, "artifact volume")


def test_artifact_downloads_share_one_storage(client: TestClient, app: FastAPI, search_with_results) -> None:
    """Downloads read through the app's one Optuna storage: 20 of them open no new connection pool
    (a storage per request built an engine, checked the schema and left the pool to the GC)."""
    body, study = search_with_results
    trained = next(t for t in study.get_trials(deepcopy=False) if t.user_attrs["trained"])
    url = f"{body['url']}/trials/{trained.number}/artifact"
    assert client.get(url).status_code == 200
    storage = app.state.services.reader.storage
    new_pools: list[object] = []

    def first_connect(dbapi_connection: object, record: object) -> None:
        new_pools.append(record)

    event.listen(Pool, "first_connect", first_connect)
    try:
        for _ in range(20):
            assert client.get(url).status_code == 200
    finally:
        event.remove(Pool, "first_connect", first_connect)
    assert new_pools == [] and app.state.services.reader.storage is storage


def test_cancel(client: TestClient, key: str, settings) -> None:
    from structsearch.service.queue import JobQueue

    body = submit(client, key, tiny_spec(trials=4))
    r = client.post(f"{body['url']}/cancel", headers=auth(key))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    q = JobQueue(settings.database_url)
    try:
        assert sorted(j["status"] for j in q.jobs_of(body["id"])) == ["cancelled"] * 4
    finally:
        q.close()
    assert_error(client.post(f"{body['url']}/cancel", headers=auth(key)), 409, "already cancelled")


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["paths"]["/api/v1/searches"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StudySpec"
    }
    assert "TeacherSpec" in doc["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_database_down_is_503(tmp_path: Path, data_root: Path) -> None:
    down = make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path / "a", data_root)
    with TestClient(create_app(down)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert_error(r, 503)
        assert r.json() == {"detail": NOT_READY} and "nobody" not in r.text and "127.0.0.1" not in r.text
        assert_error(c.get(f"{API}/searches", headers=auth("ss_any")), 503, "database unavailable")  # checking the key


@pytest.mark.parametrize(
    ("error", "status"),
    [(StructsearchError, 422), (BudgetError, 422), (NotFound, 404), (CancelRefused, 409), (SubmitFailed, 503)],
)
def test_structsearch_errors_answer_with_their_class_status(
    tmp_path: Path, data_root: Path, error: type[StructsearchError], status: int
) -> None:
    app = create_app(make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path / "a", data_root))

    @app.get("/raise")
    def raise_it() -> None:
        raise error("what went wrong")

    with TestClient(app) as c:
        assert_error(c.get("/raise"), status, "what went wrong")


def test_storage_that_cannot_be_opened_is_503_without_its_url(tmp_path: Path, data_root: Path) -> None:
    url = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/studies"
    app = create_app(make_settings(url, tmp_path / "a", data_root))

    @app.get("/open")
    def open_it() -> None:
        open_storage(url)

    with TestClient(app) as c:
        r = c.get("/open")
    assert_error(r, 503, "cannot open the study storage")
    assert "s3cret" not in r.text and "someone" not in r.text


def test_a_worker_saves_students_under_the_settings_artifacts(
    client: TestClient, key: str, settings: ServiceSettings, service_home: Path
) -> None:
    """The worker writes where the API serves downloads from, whatever $STRUCTSEARCH_ARTIFACTS says."""
    body = submit(client, key, tiny_spec(name="artifacts-here", trials=1, baselines=["uniform"]))
    db = Database(settings.database_url)
    try:
        assert TrialRunner(settings, db).run(body["id"]) == "ran a trial"
    finally:
        db.dispose()
    assert [p.name for p in (settings.artifacts / body["name"]).iterdir()] == ["trial-00000"]
    assert not (service_home / "artifacts" / body["name"]).exists()  # the environment's folder
    assert client.get(f"{body['url']}/trials/0/artifact").status_code == 200


def test_a_teacher_at_chance_is_shown_on_its_search(client: TestClient, key: str, settings: ServiceSettings) -> None:
    """The warning a CLI user gets about a teacher at chance reaches an API user too: the worker keeps
    it, once, with the teacher's score on the search; a trained teacher's search has its score and
    no warning."""
    untaught = submit(
        client,
        key,
        tiny_spec(
            name="untaught",
            trials=2,
            baselines=[],
            teacher={"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 0},
        ),
    )
    taught = submit(client, key, tiny_spec(name="taught", trials=1, baselines=[]))
    db = Database(settings.database_url)
    try:
        runner = TrialRunner(settings, db)
        assert [runner.run(untaught["id"]), runner.run(untaught["id"]), runner.run(taught["id"])] == ["ran a trial"] * 3
    finally:
        db.dispose()
    body = client.get(untaught["url"]).json()
    assert body["status"] == "done" and body["teacher_score"] < 15
    [warning] = body["warnings"]
    assert warning.startswith(f"the teacher scores {body['teacher_score']:.1f}% top-1") and "about chance" in warning
    body = client.get(taught["url"]).json()
    assert body["teacher_score"] > 15 and body["warnings"] == []
    listed = {s["name"]: s for s in client.get("/api/v1/searches").json()["items"]}
    assert listed["untaught"]["warnings"] == [warning]
