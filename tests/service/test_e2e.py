"""The service as deployed: a real uvicorn server and real ``structsearch worker`` processes.

* two workers share one search and together run exactly the requested trials, never scoring a
  structure twice; ``/pareto`` and ``/best`` over HTTP agree with ``structsearch best``;
* ``kill -9`` of a worker mid-trial: its trial is failed and re-run by another worker;
* after both, the workers' read model (``ss_trials``) equals Optuna's trials (``structsearch db check``);
* SIGTERM lets the running trial finish, then the worker exits; cancel stops the rest;
* a StructsearchError raised in a worker marks the search failed with its message.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from structsearch.search import pareto_front, study_records
from structsearch.search.results import baseline_gains
from structsearch.service.apikeys import create_key
from structsearch.service.database import Database
from structsearch.service.queue import JobQueue
from tests.service.conftest import ROOT, tiny_spec

#: Worker processes, heartbeats and signals: run alone (scripts/test.sh), not beside other tests.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

#: The console script installed next to this interpreter (what users and the image run).
CLI = [str(Path(sys.executable).parent / "structsearch")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Proc:
    """A service process with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._fh = self.log.open("w")
        self.p = subprocess.Popen(args, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, marker: str, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.text()[-3000:]}")
            return marker in self.text()

        wait_for(f"{self.name} to start", ready, timeout)

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._fh.close()


class Service:
    """An API server on 127.0.0.1 plus the workers a test starts."""

    def __init__(self, url: str, env: dict[str, str], logdir: Path) -> None:
        self.url, self.env, self.logdir = url, env, logdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        db = Database(url)
        self.key = create_key(db, "e2e")
        db.dispose()
        self.http = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [*CLI, *args, "--storage", self.url], self.env, self.logdir)
        self.procs.append(proc)
        return proc

    def worker(self, name: str) -> Proc:
        proc = self.start(name, "worker", "--name", name)
        proc.wait_ready(f"worker {name} ready")
        return proc

    def submit(self, spec: dict) -> dict:
        r = self.http.post("/api/v1/searches", json=spec)
        assert r.status_code == 202, r.text
        return r.json()

    def search(self, sid: str) -> dict:
        return self.http.get(f"/api/v1/searches/{sid}").json()

    def wait_status(self, sid: str, status: str, timeout: float = 180) -> dict:
        def reached() -> dict | None:
            body = self.search(sid)
            if body["status"] == "failed" and status != "failed":
                raise AssertionError(f"search failed: {body['error']}\n{self.logs()}")
            return body if body["status"] == status else None

        try:
            return wait_for(f"search {sid} to be {status}", reached, timeout, every=0.5)  # type: ignore[return-value]
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.text()[-2500:]}" for p in self.procs)

    def close(self) -> None:
        self.http.close()
        for p in self.procs:
            p.stop()


@pytest.fixture
def service(db_url: str, service_home: Path, tmp_path: Path, data_root: Path) -> Iterator[Service]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSEARCH_")}
    env.update(
        STRUCTSEARCH_HOME=str(service_home),
        STRUCTSEARCH_ARTIFACTS=str(service_home / "artifacts"),
        STRUCTSEARCH_TRIAL_HEARTBEAT_S="1",
        STRUCTSEARCH_WORKER_HEARTBEAT_S="1",
        STRUCTSEARCH_WORKER_STALLED_AFTER_S="4",
        STRUCTSEARCH_DATA_ROOTS=str(data_root),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    svc = Service(db_url, env, tmp_path)
    server = svc.start("api", "serve", "--host", "127.0.0.1", "--port", str(svc.port))
    server.wait_ready("Uvicorn running")
    try:
        yield svc
    finally:
        svc.close()


def assert_read_model_matches(service: Service) -> None:
    """`structsearch db check`: the workers' read model (ss_trials, counts) equals Optuna's trials."""
    out = subprocess.run([*CLI, "db", "check", "--storage", service.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.endswith(" 0 differences\n"), out.stdout + out.stderr


def own(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if "copied_from" not in t.user_attrs]


def test_two_workers_share_a_search_and_agree_with_the_cli(service: Service, tmp_path: Path, data_root: Path) -> None:
    workers = [service.worker("w1"), service.worker("w2")]
    body = service.submit(tiny_spec(name="shared", trials=6))
    done = service.wait_status(body["id"], "done")
    assert done["trials"]["complete"] == 6 and done["trials"]["failed"] == 0 and done["trials"]["running"] == 0

    study = optuna.load_study(study_name=body["name"], storage=service.url)
    mine = own(study)
    assert len(mine) == 6 and all(t.state == TrialState.COMPLETE for t in mine)
    scored_keys = [
        t.user_attrs["spec_key"] for t in mine if t.user_attrs.get("trained") and "duplicate_of" not in t.user_attrs
    ]
    assert len(scored_keys) == len(set(scored_keys)), "a structure was trained twice"
    queue = JobQueue(service.url)
    try:
        jobs = queue.jobs_of(body["id"])
    finally:
        queue.close()
    assert len(jobs) == 6 and {j["status"] for j in jobs} == {"succeeded"}
    assert len({j["worker_id"] for j in jobs}) == 2, f"both workers should have run trials: {jobs}"
    assert_read_model_matches(service)

    # /pareto over HTTP == the library's front; /best over HTTP == `structsearch best`
    pareto = service.http.get(f"{body['url']}/pareto").json()
    front = pareto["front"]
    assert front and front == [r.to_dict() for r in pareto_front(study_records(study))]
    # the study's baselines ran once each, first, and the API reports the search's gain over each
    assert [t.user_attrs.get("baseline") for t in mine[:3]] == ["uniform", "global_magnitude", "depth"]
    assert sum("baseline" in t.user_attrs for t in mine) == 3
    assert pareto["baselines"] == [g.to_dict() for g in baseline_gains(study_records(study))]
    assert all(g["score"] is not None for g in pareto["baselines"])
    budget = str(study.user_attrs["max_macs"])
    got = service.http.get(f"{body['url']}/best", params={"budget_flops": budget})
    cli = subprocess.run(
        [*CLI, "best", "--study", body["name"], "--budget-flops", budget, "--storage", service.url, "--format", "json"],
        capture_output=True,
        text=True,
        env=service.env,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert got.status_code == 200 and got.json() == json.loads(cli.stdout)

    # the best student downloads and loads
    r = service.http.get(f"{body['url']}/trials/{got.json()['trial']}/artifact")
    assert r.status_code == 200
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "student")
    import structsearch

    student = structsearch.load(tmp_path / "student")
    import torch

    assert student(torch.zeros(2, 3, 8, 8)).shape == (2, 10)

    # a StructsearchError in a worker (here: the data file is not there) fails the search with its message
    body = service.submit(tiny_spec(name="no-data", data={"train": f"npz:{data_root}/missing.npz", "input_size": 8}))
    failed = service.wait_status(body["id"], "failed", timeout=120)
    assert "missing.npz" in failed["error"] and not failed["error"].startswith("worker error")
    assert failed["trials"]["complete"] == 0

    for w in workers:  # SIGTERM on idle workers: clean exit
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.p.wait(60) == 0, w.text()[-2000:]


def running_trial(url: str, name: str) -> Callable[[], optuna.trial.FrozenTrial | None]:
    """A running trial that has proposed its structure (costed, so its parameters are all stored)."""

    def check() -> optuna.trial.FrozenTrial | None:
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)
            )
        except KeyError:
            return None
        trials = [t for t in trials if "macs" in t.user_attrs]
        return trials[0] if trials else None

    return check


def test_killed_worker_trial_is_retried_and_sigterm_finishes_the_trial(service: Service) -> None:
    # 1. kill -9 a worker in the middle of a trial; another worker finishes the search.
    victim = service.worker("victim")
    body = service.submit(tiny_spec(name="killed", trials=3, steps=250, seed=1))
    killed = wait_for("a running trial", running_trial(service.url, body["name"]), 120)
    time.sleep(0.5)
    victim.signal(signal.SIGKILL)
    victim.p.wait(10)
    rescuer = service.worker("rescuer")
    service.wait_status(body["id"], "done", timeout=240)
    study = optuna.load_study(study_name=body["name"], storage=service.url)
    mine = own(study)
    states = sorted(t.state.name for t in mine)
    assert states == ["COMPLETE"] * 3 + ["FAIL"], states
    assert next(t for t in mine if t.state == TrialState.FAIL).number == killed.number
    retried = [t for t in mine if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    assert_read_model_matches(service)  # the killed trial's row says FAIL, its retry's COMPLETE
    assert service.search(body["id"])["trials"]["failed"] == 1

    # 2. SIGTERM mid-trial: the trial completes, the worker exits 0, the rest stays queued; cancel ends it.
    body = service.submit(tiny_spec(name="graceful", trials=3, steps=250, seed=2))
    trial = wait_for("a running trial", running_trial(service.url, body["name"]), 120)
    sigterm_at = datetime.datetime.now()  # Optuna stamps trials with naive local time
    rescuer.signal(signal.SIGTERM)
    assert rescuer.p.wait(120) == 0, rescuer.text()[-3000:]
    # (baselines not reached yet wait in the queue: they have not started)
    started = [
        t for t in own(optuna.load_study(study_name=body["name"], storage=service.url)) if t.state != TrialState.WAITING
    ]
    # the trial running at SIGTERM (whichever it was by then) finished; none started afterwards
    assert next(t for t in started if t.number == trial.number).state == TrialState.COMPLETE
    assert all(t.state == TrialState.COMPLETE and t.datetime_start <= sigterm_at for t in started)
    done = len(started)
    detail = service.search(body["id"])
    assert (
        detail["status"] == "running" and detail["trials"]["complete"] == done < 3 and detail["trials"]["running"] == 0
    )
    r = service.http.post(f"{body['url']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    queue = JobQueue(service.url)
    try:
        statuses = sorted(j["status"] for j in queue.jobs_of(body["id"]))
    finally:
        queue.close()
    assert statuses == ["cancelled"] * (3 - done) + ["succeeded"] * done, statuses
