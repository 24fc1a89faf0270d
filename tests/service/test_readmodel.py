"""The trials read model (issue 14) against a real PostgreSQL and real (tiny) trials.

Searches here are run by the worker's own job code (:class:`TrialRunner`) in this process, the
way ``test_faults`` runs them: each ``run`` is one queued job of a worker.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import delete, func, select, text, update

from api import create_app
from structsearch.search import best_under_budget
from structsearch.search.storage import open_storage
from structsearch.service import database
from structsearch.service.database import Database, libpq_url
from structsearch.service.migrations import upgrade
from structsearch.service.readmodel import TrialSync, drift, recount, write_trials
from structsearch.service.searches import cancel_search
from structsearch.service.tables import Search, TrialRow
from tests.service.conftest import make_settings, tiny_spec
from tests.service.synthetic import add_trials
from tests.service.test_e2e import CLI, wait_for
from tests.service.test_faults import Harness, harness_for, run_in_thread

#: Worker processes, heartbeats or time limits: run alone (scripts/test.sh), not beside other tests.
pytestmark = pytest.mark.serial

API = "/api/v1"


@pytest.fixture
def harness(db_url: str, tmp_path: Path, data_root: Path, service_home: Path) -> Iterator[Harness]:
    yield from harness_for(make_settings(db_url, tmp_path / "artifacts", data_root))


def search_row(h: Harness, sid: str) -> Search:
    row = h.row(sid)
    assert row is not None
    return row


def drift_of(h: Harness, sid: str) -> list[str]:
    storage = open_storage(h.settings.database_url)
    try:
        return drift(h.db, storage, search_row(h, sid))
    finally:
        storage.engine.dispose()


def seqs(h: Harness, sid: str) -> dict[int, int]:
    with h.db.session() as s:
        return dict(s.execute(select(TrialRow.number, TrialRow.seq).where(TrialRow.search_id == uuid.UUID(sid))).all())


def run_jobs(h: Harness, sid: str, jobs: int) -> None:
    runner = h.runner()
    for _ in range(jobs):
        runner.run(sid)


def test_the_read_model_equals_optunas_trials_after_a_search_by_two_workers(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="rm-two", trials=6))
    assert drift_of(harness, sid) == []  # the enqueued baselines are there from submission on
    assert search_row(harness, sid).n_waiting == 3
    workers = [threading.Thread(target=run_jobs, args=(harness, sid, 4)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    row = search_row(harness, sid)
    assert row.status == "done"
    trials = harness.trials(name)
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    assert drift_of(harness, sid) == []
    study = optuna.load_study(study_name=name, storage=harness.settings.database_url)
    best = best_under_budget(str(study.user_attrs["max_macs"]), study=name, storage_url=harness.settings.database_url)
    assert row.n_trials == 6 and row.n_own_complete == 6 and row.n_waiting == 0 and row.best_number == best.trial
    # a re-run job (procrastinate retries, a second worker) changes nothing: no row is rewritten
    before = seqs(harness, sid)
    with _storage(harness) as storage:
        sync = TrialSync(harness.db, storage, uuid.UUID(sid), study._study_id)
        assert sync.record([t.number for t in trials]) == 0 and sync.backfill() == 0
    assert seqs(harness, sid) == before and drift_of(harness, sid) == []


class _storage:
    """Optuna's storage of the test database, disposed after use."""

    def __init__(self, h: Harness) -> None:
        self.storage = open_storage(h.settings.database_url)

    def __enter__(self) -> optuna.storages.RDBStorage:
        return self.storage

    def __exit__(self, *exc: object) -> None:
        self.storage.engine.dispose()


def test_two_writers_racing_on_new_rows_of_one_search_keep_its_counts(client: TestClient, harness: Harness) -> None:
    """Two writers on the same new trials at once, one with them running (a job's catch-up that
    read them a moment ago) and one with them complete (their worker): the complete rows stay,
    whichever commits last, and the search's counts agree with the rows."""
    body, study = submit_with_results(client, harness, n=0)
    sid = uuid.UUID(body["id"])
    for round_ in range(5):
        rng = random.Random(round_)
        study.add_trials([trial_like(rng, study.user_attrs["max_macs"]) for _ in range(8)])  # no row yet
        done = [t for t in study.get_trials(deepcopy=False) if t.number >= 8 * round_]
        with _storage(harness) as storage:
            race(TrialSync(harness.db, storage, sid, study._study_id), [running_copy(t) for t in done], done)
        row = search_row(harness, body["id"])
        with harness.db.session() as s:
            counts = recount(s, sid)
        assert {k: getattr(row, k) for k in counts} == counts
        assert counts["n_trials"] == counts["n_complete"] == 8 * (round_ + 1)
        assert drift_of(harness, body["id"]) == []


def test_one_round_trip_writes_keep_the_fronts_and_skip_a_deleted_search(client: TestClient, harness: Harness) -> None:
    """The writer sends its lock, upsert and front read together (one round trip): trials
    written one at a time, as a worker does, leave the fronts the library computes from all the
    rows, the fronts read in one statement are those read table by table, and a write for a
    search deleted meanwhile writes nothing (its rows would have no search)."""
    from structsearch.search.results import COST_FIELDS
    from structsearch.service import fronts

    body, study = submit_with_results(client, harness, n=0)
    sid = uuid.UUID(body["id"])
    rng = random.Random(7)
    study.add_trials([trial_like(rng, study.user_attrs["max_macs"]) for _ in range(30)])
    sync = TrialSync(harness.db, None, sid, study._study_id)
    for t in study.get_trials(deepcopy=False):
        assert sync.write([t]) == 1
    with harness.db.session() as s:
        rows = [dict(r) for r in s.execute(select(TrialRow.__table__)).mappings()]
        kept = fronts.kept_of(s.execute(fronts.KEPT_SQL, {"search": sid}).all())
        assert kept == fronts.read_kept(s, sid)
    want = {cost: fronts.front_numbers(rows, axis) for cost, axis in COST_FIELDS.items()}
    assert kept[0] == want and want["macs"]
    assert drift_of(harness, body["id"]) == []
    with harness.db.session() as s:
        assert write_trials(s, uuid.uuid4(), study.get_trials(deepcopy=False)[:3]) == 0
        assert s.scalar(select(func.count()).select_from(TrialRow)) == 30


def test_on_sqlite_the_same_writes_keep_the_counts(tmp_path: Path) -> None:
    """The embedded default (the API on SQLite) writes the read model step by step in Python:
    the same rules: a complete row stays complete, the counts equal the rows."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    upgrade(url)
    db = Database(url)
    try:
        sid = uuid.uuid4()
        with db.session() as s:
            s.add(Search(id=sid, name="lite", requested_name="lite", spec={}, trials_requested=8))
        rng = random.Random(0)
        done = [trial_like(rng, 1_000_000) for _ in range(8)]
        for n, t in enumerate(done):
            t.number, t._trial_id = n, n + 1
        with db.session() as s:
            assert write_trials(s, sid, done) == 8
        with db.session() as s:
            assert write_trials(s, sid, [running_copy(t) for t in done]) == 0
            counts = recount(s, sid)
            row = s.get(Search, sid)
            assert row is not None and {k: getattr(row, k) for k in counts} == counts
        feasible = [t for t in done if "score" in t.user_attrs]
        best = max(feasible, key=lambda t: t.user_attrs["score"])
        assert counts["n_complete"] == 8 and counts["best_number"] == best.number
    finally:
        db.dispose()


def race(sync: TrialSync, *writes: list[optuna.trial.FrozenTrial]) -> None:
    """Each write in its own thread, all released at once."""
    barrier = threading.Barrier(len(writes))

    def write(trials: list[optuna.trial.FrozenTrial]) -> None:
        barrier.wait()
        sync.write(trials)

    writers = [threading.Thread(target=write, args=(ts,)) for ts in writes]
    for w in writers:
        w.start()
    for w in writers:
        w.join()


def running_copy(t: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The trial as it was while it ran (no values, no attributes yet)."""
    return optuna.trial.FrozenTrial(
        t.number, TrialState.RUNNING, None, t.datetime_start, None, {}, {}, {}, {}, {}, t._trial_id
    )


def trial_like(rng: random.Random, max_macs: int) -> optuna.trial.FrozenTrial:
    macs = rng.randint(100_000, 2 * max_macs)
    feasible = macs <= max_macs
    score = round(rng.uniform(10, 99), 3)
    attrs = {"spec_key": f"{rng.getrandbits(48):012x}", "macs": macs, "params": 1000, "trained": feasible}
    return optuna.trial.create_trial(
        values=[score if feasible else 0.0, float(macs)],
        user_attrs=attrs | ({"score": score} if feasible else {}),
        system_attrs={"constraints:flops": float(macs - max_macs)},
    )


def test_a_pooled_connection_killed_while_idle_is_replaced(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool pings a connection that sat idle (no ping before each write: they come back to
    back) and replaces it when the database dropped it (a restart, an idle timeout)."""
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with psycopg.connect(libpq_url(db_url), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        monkeypatch.setattr(database, "PING_IDLE_S", 0.0)
        db.ping()  # would raise "server closed the connection" on the killed connection
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        db.dispose()


def test_backfill_fills_an_empty_read_model_and_check_finds_a_deleted_row(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="rm-backfill", trials=4))
    run_jobs(harness, sid, 4)
    assert drift_of(harness, sid) == []
    with harness.db.session() as s:  # as a database migrated to 0004 holds it: rows empty, counts zero
        s.execute(delete(TrialRow).where(TrialRow.search_id == uuid.UUID(sid)))
        s.execute(update(Search).where(Search.id == uuid.UUID(sid)).values(n_trials=0, best_number=None))
    check = cli("db", "check", "--storage", harness.settings.database_url)
    lines = check.stdout.splitlines()
    assert check.returncode == 1, check.stderr
    assert "trial 0 (complete) is missing from ss_trials" in lines[0] and "n_trials is 0, the study says 4" in lines[-3]
    assert lines[-1] == "1 searches checked, 6 differences"  # 4 rows, n_trials, best_number
    backfill = cli("db", "backfill", "--search", sid, "--storage", harness.settings.database_url)
    assert backfill.returncode == 0 and f"({name}): 4 trial rows written" in backfill.stdout, backfill.stderr
    assert drift_of(harness, sid) == []
    again = cli("db", "check", "--storage", harness.settings.database_url)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "1 searches checked, 0 differences"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


# -- the API's read paths ---------------------------------------------------------------------


@pytest.fixture
def client(harness: Harness, key: str) -> Iterator[TestClient]:
    with TestClient(create_app(harness.settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def submit_with_results(client: TestClient, h: Harness, n: int = 40) -> tuple[dict, optuna.Study]:
    r = client.post(f"{API}/searches", json=tiny_spec(name="rm-results", baselines=[]))
    assert r.status_code == 202, r.text
    body = r.json()
    study = optuna.load_study(study_name=body["name"], storage=h.settings.database_url)
    add_trials(study, n, max_macs=study.user_attrs["max_macs"])
    return body, study


def test_pareto_and_best_answer_304_while_no_trial_changes(client: TestClient, harness: Harness) -> None:
    body, study = submit_with_results(client, harness)
    budget = {"budget_flops": str(study.user_attrs["max_macs"]), "budget_params": "250k"}
    for path, params in ((f"{body['url']}/pareto", {}), (f"{body['url']}/best", budget)):
        first = client.get(path, params=params)
        tag = first.headers["ETag"]
        assert first.status_code == 200 and tag.startswith('W/"')
        again = client.get(path, params=params, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == tag
        assert client.get(path, params=params, headers={"If-None-Match": 'W/"other"'}).status_code == 200
    tags = {p: client.get(f"{body['url']}/{p}", params=budget).headers["ETag"] for p in ("pareto", "best")}
    add_trials(study, 1, max_macs=study.user_attrs["max_macs"], seed=7)  # a trial finishes: both change
    for p, tag in tags.items():
        assert client.get(f"{body['url']}/{p}", params=budget, headers={"If-None-Match": tag}).status_code == 200


def test_kept_bodies_are_what_a_cold_process_answers_after_trials_and_a_cancel(
    client: TestClient, harness: Harness, key: str
) -> None:
    body, study = submit_with_results(client, harness, n=20)
    budget = {"budget_flops": str(study.user_attrs["max_macs"]), "budget_params": "250k"}
    reads = [
        (f"{body['url']}/pareto", {}),
        (f"{body['url']}/best", budget),
        (f"{body['url']}/trials", {"limit": 100}),
        (body["url"], {}),
    ]

    def answers(c: TestClient) -> list[bytes]:
        got = [c.get(path, params=params) for path, params in reads]
        assert all(r.status_code == 200 for r in got), [r.text for r in got]
        return [r.content for r in got]

    def cold() -> list[bytes]:
        with TestClient(create_app(harness.settings), headers={"Authorization": f"Bearer {key}"}) as c:
            return answers(c)

    before = answers(client)
    assert answers(client) == before == cold()  # kept, and the same bytes
    add_trials(study, 15, max_macs=study.user_attrs["max_macs"], seed=11)
    after = answers(client)
    assert after == cold()
    assert after[2] != before[2] and after[3] != before[3]  # the page and the counts moved (the front may not)
    assert client.get(f"{body['url']}/trials", params={"limit": 100}).json()["total"] == 35
    assert client.post(f"{body['url']}/cancel").status_code == 200  # a status change, no trial
    assert client.get(body["url"]).json()["status"] == "cancelled"
    assert answers(client) == cold()


def test_keyset_pages_return_every_trial_once_while_trials_are_added(client: TestClient, harness: Harness) -> None:
    body, study = submit_with_results(client, harness, n=25)
    seen: list[int] = []
    after, pages = -1, 0
    while after is not None:
        page = client.get(f"{body['url']}/trials", params={"after": after, "limit": 10}).json()
        seen += [t["trial"] for t in page["items"]]
        after, pages = page["next"], pages + 1
        if pages <= 3:  # trials finish between page reads
            add_trials(study, 4, max_macs=study.user_attrs["max_macs"], seed=100 + pages)
    assert seen == list(range(25 + 12)) and page["total"] == 37
    # offset pages (the older shape) still work, and a state filter counts from the search row
    assert [t["trial"] for t in client.get(f"{body['url']}/trials", params={"offset": 30}).json()["items"]] == list(
        range(30, 37)
    )
    assert client.get(f"{body['url']}/trials", params={"state": "complete", "limit": 1}).json()["total"] == 37


def test_best_over_http_equals_the_cli_on_postgres(client: TestClient, harness: Harness) -> None:
    body, study = submit_with_results(client, harness)
    for flags in (
        ["--budget-flops", str(study.user_attrs["max_macs"])],
        ["--budget-flops", "50%", "--budget-params", "150k"],
    ):
        params = {f.strip("-").replace("-", "_"): v for f, v in zip(flags[::2], flags[1::2], strict=True)}
        api = client.get(f"{body['url']}/best", params=params)
        out = cli(
            "best", "--study", body["name"], *flags, "--storage", harness.settings.database_url, "--format", "json"
        )
        assert api.status_code == 200 and out.returncode == 0, (api.text, out.stderr)
        assert api.json() == json.loads(out.stdout)


def test_finetune_results_are_shown_without_server_paths(client: TestClient, harness: Harness) -> None:
    body, study = submit_with_results(client, harness, n=3)
    assert client.get(f"{body['url']}/finetune").json() == []
    entry = {"epochs": 2, "test_top1": 91.5, "teacher_top1": 93.0, "out": "/srv/secret/finetune", "train_data": "/x"}
    study.set_user_attr("finetune", {"2": entry})
    got = client.get(f"{body['url']}/finetune").json()
    assert got[0]["trial"] == 2 and got[0]["test_top1"] == 91.5 and "/srv" not in json.dumps(got)


def read_events(client: TestClient, path: str, **headers: str) -> list[tuple[int | None, str, dict]]:
    """(id, event, data) of each event of a stream, read to its end."""
    events: list[tuple[int | None, str, dict]] = []
    with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event_id, kind = None, ""
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((event_id, kind, json.loads(line[6:])))
    return events


def test_events_deliver_every_completion_of_a_six_trial_search(
    db_url: str, tmp_path: Path, data_root: Path, service_home: Path, key: str
) -> None:
    settings = make_settings(db_url, tmp_path / "artifacts", data_root, events_poll_s=0.2)
    for h in harness_for(settings):
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
            body = c.post(f"{API}/searches", json=tiny_spec(name="rm-events", trials=6)).json()
            worker = threading.Thread(target=run_jobs, args=(h, body["id"], 6))
            worker.start()
            events = read_events(c, f"{body['url']}/events")
            worker.join()
            done = [e["trial"] for _, k, e in events if k == "trial" and e["state"] == "complete"]
            assert sorted(done) == list(range(6)), events
            assert [e["status"] for _, k, e in events if k == "status"][-1] == "done"
            assert events[-1][1] == "end"
            # a client resuming from the middle gets each trial changed after it once, as it is
            # now (a trial's running row was replaced by its finished one: one change left)
            middle = [i for i, k, _ in events if k == "trial"][3]
            resumed = read_events(c, f"{body['url']}/events", **{"Last-Event-ID": str(middle)})
            last = {e["trial"]: i for i, k, e in events if k == "trial"}
            assert [i for i, k, _ in resumed if k == "trial"] == sorted(i for i in last.values() if i > middle)
            assert all(e["state"] != "running" for _, k, e in resumed if k == "trial")


def running_trials(c: TestClient, url: str) -> list[dict]:
    return c.get(f"{url}/trials", params={"state": "running"}).json()["items"]


def test_a_running_trial_is_listed_and_streamed_while_it_runs(
    db_url: str, tmp_path: Path, data_root: Path, service_home: Path, key: str
) -> None:
    """The worker writes its trial's row as the trial starts, not at the next job's catch-up."""
    settings = make_settings(
        db_url, tmp_path / "artifacts", data_root, max_proxy_steps=1_000_000, events_poll_s=0.2, events_max_s=1.0
    )
    for h in harness_for(settings):
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
            # a million proxy steps: the trial runs until the search is cancelled
            spec = tiny_spec(name="rm-running", trials=1, steps=1_000_000, baselines=["uniform"])
            body = c.post(f"{API}/searches", json=spec).json()
            thread, out = run_in_thread(h.runner(), body["id"])
            running = functools.partial(running_trials, c, body["url"])
            try:
                (trial,) = wait_for("the trial in /trials?state=running", running, 120)
                assert trial["trial"] == 0 and trial["baseline"] == "uniform"
                assert c.get(body["url"]).json()["trials"]["running"] == 1
                events = read_events(c, f"{body['url']}/events")  # ends after events_max_s
                assert [(e["trial"], e["state"]) for _, k, e in events if k == "trial"] == [(0, "running")]
            finally:
                cancel_search(h.db, h.queue, uuid.UUID(body["id"]))
                thread.join(60)
            assert out.get("result") == "stopped: search is cancelled", out
            assert running() == [] and drift_of(h, body["id"]) == []
