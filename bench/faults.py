"""Faults a running search survives: one 12-trial digits search, 2 workers, five faults in one run.

What it does:

1. a throwaway PostgreSQL cluster from ``scripts/postgres.sh`` (its own: the bench restarts it),
   migrated; a real ``structsearch serve`` and two ``structsearch worker`` processes;
2. a 12-trial digits search submitted over HTTP, then, each once enough trials have completed:

   * **injected exception**: the study's artifact folder is blocked by a file until one trial has
     failed (``save_student`` raises ``FileExistsError``: a full or read-only volume);
   * **pg_ctl restart** of the database mid-trial (``-m fast``: every connection is cut);
   * **kill -9** of a worker mid-trial, and a replacement worker started;
   * **SIGTERM** of the other worker mid-trial (it drains), and a replacement started;
   * **API restart** (SIGTERM, start again; the search is read back over HTTP);

3. waits for the search to end and reports: complete trials (12 expected), structures trained
   twice (0 expected), jobs taken back from a silent worker (1 expected: the kill -9; the
   SIGTERM'd worker keeps beating while it drains). Prints one row per fault: what happened
   (trials that failed in its window and how they ended) and trials lost.

Run:  .venv/bin/python bench/faults.py [--trials 12] [--steps 1500] [--json FILE]
(``--json``: the same figures as JSON, for ``bench/results.py``'s reliability stage.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import optuna
import psycopg
from optuna.trial import TrialState
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from structsearch.search.objective import FAILURE_ATTR  # noqa: E402
from structsearch.service.apikeys import create_key  # noqa: E402
from structsearch.service.database import Database, libpq_url  # noqa: E402
from structsearch.service.migrations import upgrade  # noqa: E402

CLI = [str(Path(sys.executable).parent / "structsearch")]


def spec(trials: int, steps: int) -> dict:
    return {
        "name": "faults",
        "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
        "data": {"train": "digits", "val_size": 0.2, "input_size": 8},
        "budget": {"flops": "60%"},
        "objectives": ["accuracy", "macs"],
        "trials": trials,
        "proxy": {"steps": steps, "batch_size": 32, "device": "cpu"},
        "seed": 0,
    }


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the database may be restarting
            value = None
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Cluster:
    """The bench's own PostgreSQL (restartable)."""

    def __init__(self) -> None:
        out = subprocess.run([str(ROOT / "scripts/postgres.sh"), "start"], capture_output=True, text=True, check=True)
        exports = dict(re.findall(r"export (\w+)='([^']*)'", out.stdout))
        self.url, self.dir = exports["STRUCTSEARCH_TEST_DATABASE_URL"], Path(exports["STRUCTSEARCH_TEST_PGDIR"])
        name = f"ss_faults_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.url = make_url(self.url).set(database=name).render_as_string(hide_password=False)
        upgrade(self.url)

    def restart(self) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        data = self.dir / "data"
        cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"), "-m", "fast", "-w"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", data.owner(), "--", *cmd]
        # the new server must not inherit a pipe of ours (it would keep it open: no EOF, no return)
        subprocess.run([*cmd, "restart"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts/postgres.sh"), "stop", str(self.dir)], capture_output=True)


class Procs:
    def __init__(self, url: str, env: dict[str, str], logdir: Path) -> None:
        self.url, self.env, self.logdir = url, env, logdir
        self.all: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, ready: str) -> subprocess.Popen:
        log = (self.logdir / f"{name}.log").open("w")
        p = subprocess.Popen([*CLI, *args, "--storage", self.url], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.all[name] = p
        wait_for(f"{name} to start", lambda: ready in (self.logdir / f"{name}.log").read_text(), 120)
        return p

    def worker(self, name: str) -> subprocess.Popen:
        return self.start(name, "worker", "--name", name, ready=f"worker {name} ready")

    def stop_all(self) -> None:
        for p in self.all.values():
            if p.poll() is None:
                p.terminate()
        for p in self.all.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=1500)  # ~5-10 s a trial on a CPU core
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="structsearch-faults-"))
    cluster = Cluster()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSEARCH_")}
    env.update(
        STRUCTSEARCH_HOME=str(work / "home"),
        STRUCTSEARCH_ARTIFACTS=str(work / "artifacts"),
        STRUCTSEARCH_TRIAL_HEARTBEAT_S="2",
        STRUCTSEARCH_WORKER_HEARTBEAT_S="1",
        STRUCTSEARCH_WORKER_STALLED_AFTER_S="6",
        STRUCTSEARCH_RETRY_WAIT_S="2",
        STRUCTSEARCH_MAX_CONSECUTIVE_FAILURES="4",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    procs = Procs(cluster.url, env, work)
    db = Database(cluster.url)
    key = create_key(db, "faults")
    db.dispose()
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    rows: list[tuple[str, datetime.datetime, str]] = []
    try:
        serve = ("serve", "--host", "127.0.0.1", "--port", str(port))
        procs.start("api", *serve, ready="Uvicorn running")
        w1, w2 = procs.worker("w1"), procs.worker("w2")
        r = http.post("/api/v1/searches", json=spec(args.trials, args.steps))
        assert r.status_code == 202, r.text
        sid, name = r.json()["id"], r.json()["name"]

        storage = optuna.storages.RDBStorage(cluster.url)  # one engine for every look (pre-pinged)

        def trials() -> list[optuna.trial.FrozenTrial]:
            return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)

        def complete_at_least(n: int) -> Callable[[], bool]:
            return lambda: sum(t.state == TrialState.COMPLETE for t in trials()) >= n

        def training() -> bool:
            return any(t.state == TrialState.RUNNING and "macs" in t.user_attrs for t in trials())

        def mark(fault: str) -> None:
            rows.append((fault, datetime.datetime.now(), ""))
            print(f"{datetime.datetime.now():%H:%M:%S} {fault}", flush=True)

        n = args.trials
        mark("injected trial exception")  # before the study's artifact folder exists
        blocker = work / "artifacts" / name
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("blocked")
        wait_for("a trial to fail", lambda: any(t.state == TrialState.FAIL for t in trials()), 300)
        blocker.unlink()

        wait_for("more trials", complete_at_least(n // 4), 600)
        wait_for("a running trial", training, 300)
        mark("pg_ctl restart")
        cluster.restart()

        wait_for("more trials", complete_at_least(n // 2), 600)
        wait_for("a running trial", training, 300)
        mark("kill -9 worker w1")
        w1.send_signal(signal.SIGKILL)
        procs.worker("w3")

        wait_for("more trials", complete_at_least(2 * n // 3), 600)
        wait_for("a running trial", training, 300)
        mark("SIGTERM worker w2 + restart")
        w2.send_signal(signal.SIGTERM)
        w2.wait(600)
        procs.worker("w4")

        wait_for("more trials", complete_at_least(3 * n // 4), 600)
        mark("API restart")
        procs.all["api"].terminate()
        procs.all["api"].wait(60)
        procs.start("api2", *serve, ready="Uvicorn running")

        def ended() -> str | None:
            status = http.get(f"/api/v1/searches/{sid}").json()["status"]
            return status if status in ("done", "failed", "cancelled") else None

        status = wait_for("the search to end", ended, 1800, every=1.0)
        final = http.get(f"/api/v1/searches/{sid}").json()
        figures = report(rows, trials(), n, status, final.get("error"), _requeued_from_silent_workers(work))
        figures |= {"trials": n, "steps": args.steps, "workers": 2}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        http.close()
        procs.stop_all()
        cluster.stop()
        print(f"logs: {work}")


def report(
    rows: list[tuple[str, datetime.datetime, str]],
    trials: list[optuna.trial.FrozenTrial],
    requested: int,
    status: object,
    error: object,
    requeued: int,
) -> dict[str, object]:
    """Print the fault table and the summary line; return the same figures."""
    own = [t for t in trials if "copied_from" not in t.user_attrs]
    complete = [t for t in own if t.state == TrialState.COMPLETE]
    lost = requested - len(complete)
    keys = [
        t.user_attrs.get("spec_key")
        for t in complete
        if t.user_attrs.get("trained") and "duplicate_of" not in t.user_attrs
    ]
    faults = []
    for i, (fault, at, _) in enumerate(rows):
        until = rows[i + 1][1] if i + 1 < len(rows) else datetime.datetime.max
        failed = [
            t for t in own if t.state == TrialState.FAIL and t.datetime_complete and at <= t.datetime_complete < until
        ]
        how = ", ".join(
            f"trial {t.number} failed ({t.user_attrs.get(FAILURE_ATTR, 'stale heartbeat: worker gone')})"
            for t in failed
        )
        # trials lost are counted for the whole run: 0 for every fault when none was lost, else unknown
        faults.append(
            {"fault": fault, "what": f"{how or 'no trial failed'}; search went on", "lost": 0 if lost == 0 else None}
        )
    figures = {
        "faults": faults,
        "status": status,
        "error": error,
        "complete": len(complete),
        "failed_retried": sum(t.state == TrialState.FAIL for t in own),
        "trained_twice": len(keys) - len(set(keys)),
        "requeued": requeued,
        "lost": lost,
    }
    print("\n| fault | what happened | trials lost |\n|---|---|---|")
    for f in faults:
        print(f"| {f['fault']} | {f['what']} | {'?' if f['lost'] is None else f['lost']} |")
    print(
        f"\nsearch {status}{f' ({error})' if error else ''}: {len(complete)}/{requested} complete trials, "
        f"{figures['failed_retried']} failed trials retried, {figures['trained_twice']} structures trained twice, "
        f"{requeued} jobs taken back from a silent worker (1 expected: the kill -9), trials lost: {lost}"
    )
    return figures


def _requeued_from_silent_workers(logdir: Path) -> int:
    """Jobs other workers took back from a worker that stopped beating (the kill -9 should be the only one)."""
    return sum(
        log.read_text(errors="replace").count("of a dead worker put back in the queue") for log in logdir.glob("*.log")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
