"""Load test of the read endpoints: latency p50/p99 and requests/s, read model vs the old Optuna path.

What it does:

1. a fresh database on PostgreSQL (``--database-url``, else ``$STRUCTSEARCH_TEST_DATABASE_URL``,
   else a throwaway cluster from ``scripts/postgres.sh``), migrated;
2. one search submitted over HTTP (no workers run), then ``--trials`` finished trials seeded
   straight into Optuna's tables and ``ss_trials`` with ``COPY`` (rows built by the worker's own
   ``readmodel.row_of``; random MACs/params/scores, ~10 % over budget; then the counts and
   Pareto fronts the worker's writes keep, and ``ANALYZE``); with ``--searches S``,
   S searches of ``--trials-per-search`` trials each (copies of the submitted one, made in SQL);
3. the worker's cost of writing the read model, per trial: new trials are started and finished
   in the study one at a time, each written as it starts and as it ends (``TrialSync.write`` of
   the trial the worker holds, what its hooks do; Optuna's own reads and writes are not timed),
   then one job's catch-up (``TrialSync.catch_up``) at this study size;
4. two API processes (uvicorn, ``structsearch serve``), started fresh (cold caches); for
   ``/pareto``, ``/best``, ``/trials`` (keyset, mid-study), the search summary and the list
   (``/searches?limit=100``): ``--requests`` requests, ``--concurrency`` in flight, alternating
   between the two processes, spread over the searches; with the CPU the API processes and this
   client used per request (they share the machine's cores with PostgreSQL);
5. with ``--old``, the same against the previous code path (the tree at ``--old-ref``, by
   default the commit before the read model, exported with ``git archive``): its API reads
   Optuna's storage through its per-process study cache. The ratio is the headline.

Run:  .venv/bin/python bench/api_load.py --trials 10000 --old
      .venv/bin/python bench/api_load.py --trials 100000 --old --old-requests 40
      .venv/bin/python bench/api_load.py --searches 200 --trials-per-search 100 --old
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import optuna
import psycopg
from sqlalchemy import make_url, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from structsearch.service.apikeys import create_key  # noqa: E402
from structsearch.service.database import Database, libpq_url  # noqa: E402
from structsearch.service.migrations import upgrade  # noqa: E402
from structsearch.service.readmodel import TrialSync, refresh_search, row_of  # noqa: E402
from structsearch.service.tables import Search, TrialRow  # noqa: E402

SPEC = {
    "name": "bench",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
    "data": {"train": "digits", "input_size": 8},
    "budget": {"flops": "60%"},
    "trials": 4,
    "baselines": [],
    "proxy": {"steps": 5, "batch_size": 32},
}
READ_MODEL_MIGRATION = "alembic/versions/0004_trials_read_model.py"


def postgres_url(given: str | None) -> tuple[str, str | None]:
    url = given or os.environ.get("STRUCTSEARCH_TEST_DATABASE_URL")
    if url:
        return url, None
    out = subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True, check=True)
    exports = dict(re.findall(r"export (\w+)='([^']*)'", out.stdout))
    return exports["STRUCTSEARCH_TEST_DATABASE_URL"], exports["STRUCTSEARCH_TEST_PGDIR"]


def fresh_database(url: str) -> str:
    name = f"ss_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def fake_trial(rng: random.Random, i: int, max_macs: int) -> optuna.trial.FrozenTrial:
    """A finished trial shaped like a real one (spec, spec_key, macs, params, score, trained)."""
    macs, params = rng.randint(100_000, int(max_macs * 1.1)), rng.randint(10_000, 300_000)
    feasible = macs <= max_macs
    score = round(rng.uniform(10, 99), 3)
    spec = {
        "model": "cifar_resnet20",
        "model_kwargs": {"num_classes": 10},
        "stages": [
            [{"keep": rng.random() > 0.3, "width": rng.choice([0.25, 0.5, 0.75, 1.0])} for _ in range(3)]
            for _ in range(3)
        ],
    }
    attrs = {
        "spec": spec,
        "spec_key": f"{i:016x}",
        "macs": macs,
        "params": params,
        "trained": feasible,
        "proxy_seconds": 0.1,
        "proxy_steps": 5,
    } | ({"score": score} if feasible else {})
    return optuna.trial.create_trial(
        values=[score if feasible else 0.0, float(macs)],
        user_attrs=attrs,
        system_attrs={"constraints:flops": float(macs - max_macs)},
    )


def seed(url: str, searches: list[tuple[uuid.UUID, int]], per_search: int, max_macs: int) -> None:
    """``per_search`` finished trials in each ``(search id, Optuna study id)``: Optuna's rows and
    the read model's, with ``COPY`` (what a worker would have written, trial by trial)."""
    rng = random.Random(0)
    with psycopg.connect(libpq_url(url)) as conn:
        next_id = conn.execute("SELECT coalesce(max(trial_id), 0) + 1 FROM trials").fetchone()[0]  # type: ignore[index]
        seq = conn.execute("SELECT nextval('ss_trials_seq')").fetchone()[0]  # type: ignore[index]
        cols = [c.name for c in TrialRow.__table__.columns]
        now = datetime.now(UTC).replace(tzinfo=None)
        cur = conn.cursor()
        for search_id, study_id in searches:
            trials = []
            for n in range(per_search):
                t = fake_trial(rng, n, max_macs)
                t.number, t._trial_id = n, next_id
                next_id += 1
                trials.append((study_id, t))
            with cur.copy(
                "COPY trials (trial_id, number, study_id, state, datetime_start, datetime_complete) FROM STDIN"
            ) as cp:
                for sid, t in trials:
                    cp.write_row((t._trial_id, t.number, sid, "COMPLETE", now, now))
            with cur.copy("COPY trial_values (trial_id, objective, value, value_type) FROM STDIN") as cp:
                for _, t in trials:
                    for k, v in enumerate(t.values):
                        cp.write_row((t._trial_id, k, v, "FINITE"))
            for table, which in (("trial_user_attributes", "user_attrs"), ("trial_system_attributes", "system_attrs")):
                with cur.copy(f"COPY {table} (trial_id, key, value_json) FROM STDIN") as cp:
                    for _, t in trials:
                        for key, value in getattr(t, which).items():
                            cp.write_row((t._trial_id, key, json.dumps(value)))
            with cur.copy(f"COPY ss_trials ({', '.join(cols)}) FROM STDIN") as cp:
                for _, t in trials:
                    row = row_of(search_id, t) | {"seq": seq}
                    seq += 1
                    row["spec"] = json.dumps(row["spec"])
                    cp.write_row([row[c] for c in cols])
        conn.execute("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), (SELECT max(trial_id) FROM trials))")
        conn.execute("SELECT setval('ss_trials_seq', %s)", (seq,))
        conn.commit()
    db = Database(url)
    try:
        for search_id, _ in searches:
            with db.session() as s:  # the counts and fronts the worker's writes would have kept
                refresh_search(s, search_id)
        with db.engine.connect() as conn:  # what autovacuum does within a minute of such a load
            conn.execute(text("ANALYZE ss_trials"))
            conn.commit()
    finally:
        db.dispose()


def clone_searches(url: str, n: int) -> list[tuple[uuid.UUID, int]]:
    """``n`` searches like the submitted 'bench' one (its row, study and study attributes copied in SQL)."""
    out = []
    with psycopg.connect(libpq_url(url)) as conn:
        src_id, src_study = conn.execute(
            "SELECT s.id, st.study_id FROM ss_searches s JOIN studies st ON st.study_name = s.name WHERE s.name = 'bench'"
        ).fetchone()  # type: ignore[misc]
        out.append((src_id, src_study))
        for i in range(1, n):
            name, sid = f"bench-{i:04d}", uuid.uuid4()
            study = conn.execute("INSERT INTO studies (study_name) VALUES (%s) RETURNING study_id", (name,)).fetchone()[
                0
            ]  # type: ignore[index]
            conn.execute(
                "INSERT INTO study_directions (direction, study_id, objective) "
                "SELECT direction, %s, objective FROM study_directions WHERE study_id = %s",
                (study, src_study),
            )
            conn.execute(
                "INSERT INTO study_user_attributes (study_id, key, value_json) "
                "SELECT %s, key, value_json FROM study_user_attributes WHERE study_id = %s",
                (study, src_study),
            )
            conn.execute(
                "INSERT INTO ss_searches (id, name, requested_name, spec, status, trials_requested, api_key_id, "
                "created_at, updated_at) SELECT %s, %s, %s, spec, status, trials_requested, api_key_id, "
                "created_at + %s * interval '1 ms', updated_at FROM ss_searches WHERE id = %s",
                (sid, name, name, i, src_id),
            )
            out.append((sid, study))
        conn.commit()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(url: str, home: Path, count: int, source: Path | None = None) -> list[tuple[subprocess.Popen, str]]:
    """``count`` fresh API processes (``structsearch serve``; from ``source`` when given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSEARCH_")}
    env.update(STRUCTSEARCH_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(source or ROOT))
    servers = []
    for _ in range(count):
        port = free_port()
        args = [sys.executable, "-m", "structsearch.cli", "serve", "--port", str(port), "--storage", url]
        proc = subprocess.Popen(args, env=env, cwd=source or ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append((proc, f"http://127.0.0.1:{port}"))
    for proc, base in servers:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(servers)
                raise SystemExit("an API process did not start")
            time.sleep(0.3)
    return servers


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux ``/proc``; 0 elsewhere). On a small
    machine the API, PostgreSQL and this client share the cores: the latencies are read with it."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def stop(servers: list[tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in servers:
        proc.terminate()
    for proc, _ in servers:
        proc.wait()


async def load(bases: list[str], paths: list[str], n: int, concurrency: int, key: str) -> dict[str, float]:
    """``n`` GETs, cycling over ``paths`` and the API processes, ``concurrency`` in flight; no warm-up."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    targets = itertools.cycle([(b, p) for p in paths for b in bases])
    # Up to ``concurrency`` kept-alive connections to each process: with one pool of
    # ``concurrency`` for all of them, requests alternating between processes closed and opened
    # connections all the time (about one request in ten paid a TCP connect on both sides).
    pool = concurrency * len(bases)
    async with httpx.AsyncClient(
        timeout=600,
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        headers={"Authorization": f"Bearer {key}"},
    ) as client:

        async def one(base: str, path: str) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                resp = await client.get(base + path)
                latencies.append(time.perf_counter() - t)
                errors += resp.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one(*next(targets)) for _ in range(n)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"p50": q[49] * 1000, "p99": q[98] * 1000, "rps": n / wall, "errors": errors}


def write_overhead(url: str, search_id: uuid.UUID, count: int, max_macs: int) -> None:
    """Per-trial cost of the worker's read-model write at this study size (step 3 of the docstring)."""
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    study = optuna.load_study(study_name="bench", storage=storage)
    db = Database(url)
    try:
        rng = random.Random(1)
        sync = TrialSync(db, storage, search_id, study._study_id)
        times: dict[str, list[float]] = {"start": [], "end": []}
        for i in range(count):
            done = fake_trial(rng, 10**9 + i, max_macs)
            trial_id = storage.create_new_trial(study._study_id)
            running = storage.get_trial(trial_id)  # what the worker's optuna.Trial holds as it starts
            t = time.perf_counter()
            sync.write([running])
            times["start"].append((time.perf_counter() - t) * 1000)
            for key, value in done.user_attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
            for key, value in done.system_attrs.items():
                storage.set_trial_system_attr(trial_id, key, value)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, done.values)
            finished = storage.get_trial(trial_id)  # what Optuna hands the worker's callback
            t = time.perf_counter()
            sync.write([finished])
            times["end"].append((time.perf_counter() - t) * 1000)
        study.add_trial(fake_trial(rng, 2 * 10**9, max_macs))
        t = time.perf_counter()
        sync.catch_up()
        catch_up_ms = (time.perf_counter() - t) * 1000
    finally:
        db.dispose()
        storage.engine.dispose()
    per_trial = [a + b for a, b in zip(times["start"], times["end"], strict=True)]
    print(f"worker read-model writes per trial ({count} trials, each written as it starts and as it ends):")
    for what, ms in (("start", times["start"]), ("end", times["end"]), ("per trial", per_trial)):
        q = statistics.quantiles(ms, n=100, method="inclusive")
        print(f"  {what:<9} mean {statistics.fmean(ms):.2f} ms, p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms")
    print(f"  one job's catch-up at this study size: {catch_up_ms:.1f} ms")


def old_tree(ref: str | None) -> tuple[Path, str]:
    """The source tree of the previous code path (``git archive`` of ``ref``) in a temporary folder."""
    if ref is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", READ_MODEL_MIGRATION],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not added:
            raise SystemExit("--old: cannot find the commit that added the read model; pass --old-ref")
        ref = f"{added[-1]}^"
    ref = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    data = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True).stdout
    dest = Path(tempfile.mkdtemp(prefix="structsearch-old-"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="PostgreSQL server URL (a new database is created on it)")
    ap.add_argument("--trials", type=int, default=10_000, help="trials of the one search (without --searches)")
    ap.add_argument("--searches", type=int, default=1)
    ap.add_argument("--trials-per-search", type=int, default=100, help="with --searches")
    ap.add_argument("--requests", type=int, default=400, help="requests per endpoint on the read model")
    ap.add_argument("--old", action="store_true", help="also measure the previous code path (Optuna reads)")
    ap.add_argument("--old-ref", help="git ref of the previous code path (default: the commit before the read model)")
    ap.add_argument("--old-requests", type=int, default=100, help="requests per endpoint on the previous code path")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--processes", type=int, default=2, help="API processes")
    ap.add_argument("--write-trials", type=int, default=200, help="trials recorded one by one to time the write")
    args = ap.parse_args()

    server_url, pgdir = postgres_url(args.database_url)
    home = Path(tempfile.mkdtemp(prefix="structsearch-bench-"))
    try:
        url = fresh_database(server_url)
        upgrade(url)
        db = Database(url)
        key = create_key(db, "bench")
        servers = start_servers(url, home, 1)
        try:
            r = httpx.post(
                f"{servers[0][1]}/api/v1/searches", json=SPEC, headers={"Authorization": f"Bearer {key}"}, timeout=300
            )
            r.raise_for_status()
        finally:
            stop(servers)
        max_macs = optuna.load_study(study_name="bench", storage=url).user_attrs["max_macs"]
        per_search = args.trials_per_search if args.searches > 1 else args.trials
        t = time.perf_counter()
        searches = clone_searches(url, args.searches)
        seed(url, searches, per_search, max_macs)
        print(f"seeded {args.searches} search(es) x {per_search} trials in {time.perf_counter() - t:.1f} s (COPY)")
        with db.session() as s:
            bench_id = s.scalar(select(Search.id).where(Search.name == "bench"))
        db.dispose()
        assert bench_id is not None
        write_overhead(url, bench_id, args.write_trials, max_macs)

        ids = [str(sid) for sid, _ in searches]
        rng = random.Random(2)
        sample = [rng.choice(ids) for _ in range(min(len(ids), 50))] if len(ids) > 1 else ids
        mid = per_search // 2
        endpoints = {
            "/pareto": [f"/api/v1/searches/{s}/pareto" for s in sample],
            "/best": [f"/api/v1/searches/{s}/best?budget_flops={max_macs}&budget_params=250k" for s in sample],
            "/trials": [f"/api/v1/searches/{s}/trials?limit=100&after={mid}" for s in sample],
            "/searches/{id}": [f"/api/v1/searches/{s}" for s in sample],
            "/searches (list)": ["/api/v1/searches?limit=100"],
        }
        old_endpoints = {
            **endpoints,
            "/trials": [f"/api/v1/searches/{s}/trials?limit=100&offset={mid}" for s in sample],
        }
        # This process imported optuna, SQLAlchemy and the service: a full collection of its heap
        # took ~290 ms and added it to every request in flight (a p99 of ~300 ms on whichever
        # endpoint was being measured a few seconds in). Frozen, the latencies are the servers'.
        gc.collect()
        gc.freeze()
        runs = [("read model", None, endpoints, args.requests)]
        if args.old:
            source, ref = old_tree(args.old_ref)
            runs.append((f"old ({ref[:12]})", source, old_endpoints, args.old_requests))
        print(
            f"\n{args.searches} search(es) x {per_search} trials, concurrency {args.concurrency}, "
            f"{args.processes} API processes started cold per path, PostgreSQL on 127.0.0.1"
        )
        print(
            f"{'endpoint':<18} {'path':<22} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'errors':>6}"
            f" {'API CPU ms/req':>15} {'client CPU ms/req':>18}"
        )
        results: dict[tuple[str, str], dict[str, float]] = {}
        for label, source, paths, n in runs:
            servers = start_servers(url, home, args.processes, source)
            try:
                pids, bases = [p.pid for p, _ in servers], [b for _, b in servers]
                for name, targets in paths.items():
                    api_cpu, client_cpu = cpu_seconds(pids), time.process_time()
                    m = asyncio.run(load(bases, targets, n, args.concurrency, key))
                    api_cpu = cpu_seconds(pids) - api_cpu
                    client_cpu = time.process_time() - client_cpu
                    results[(label, name)] = m
                    print(
                        f"{name:<18} {label:<22} {n:>8} {m['p50']:>9.1f} {m['p99']:>9.1f} {m['rps']:>8.1f} {m['errors']:>6}"
                        f" {api_cpu / n * 1000:>15.2f} {client_cpu / n * 1000:>18.2f}"
                    )
            finally:
                stop(servers)
        if args.old:
            old_label = runs[1][0]
            print("\nratio old / read model (p50, p99, req/s the other way):")
            for name in endpoints:
                new, old = results[("read model", name)], results[(old_label, name)]
                print(
                    f"  {name:<18} p50 x{old['p50'] / new['p50']:.1f}  p99 x{old['p99'] / new['p99']:.1f}  "
                    f"req/s x{new['rps'] / old['rps']:.1f}"
                )
    finally:
        if pgdir:
            subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "stop", pgdir], capture_output=True)


if __name__ == "__main__":
    main()
