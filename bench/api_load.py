"""Load test of the read endpoints at 10,000 stored trials: latency p50/p99 and requests/s.

What it does:

1. a fresh database on PostgreSQL (``--database-url``, else ``$STRUCTSEARCH_TEST_DATABASE_URL``,
   else a throwaway cluster from ``scripts/postgres.sh``), migrated;
2. a real ``structsearch serve`` (uvicorn, one process) on 127.0.0.1; a search submitted over HTTP
   (no workers run), then ``--trials`` finished trials added straight to its study with
   ``study.add_trials`` (random MACs/params/scores, ~10 % over budget);
3. for ``/pareto``, ``/best`` and ``/trials`` (and the search summary): ``--requests`` requests,
   ``--concurrency`` in flight at once (httpx async client), after one warm-up request;
4. all of that twice: with the API's per-study cache of finished trials (the default) and without
   it (``STRUCTSEARCH_STUDY_CACHE_SIZE=0``: every request re-reads the study from Optuna).

Run:  .venv/bin/python bench/api_load.py [--trials 10000] [--requests 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import optuna
import psycopg
from sqlalchemy import make_url, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from structsearch.service.apikeys import create_key  # noqa: E402
from structsearch.service.database import Database, libpq_url  # noqa: E402
from structsearch.service.migrations import upgrade  # noqa: E402
from structsearch.service.tables import Search  # noqa: E402

SPEC = {
    "name": "bench",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
    "data": {"train": "digits", "input_size": 8},
    "budget": {"flops": "60%"},
    "trials": 4,
    "proxy": {"steps": 5, "batch_size": 32},
}


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


def add_trials(study: optuna.Study, n: int, max_macs: int, seed: int = 0) -> None:
    """``n`` finished trials shaped like real ones (spec, spec_key, macs, params, score, trained)."""
    rng = random.Random(seed)
    batch = []
    for i in range(n):
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
            "score": score if feasible else None,
            "proxy_seconds": 0.1,
            "proxy_steps": 5,
        }
        batch.append(
            optuna.trial.create_trial(
                values=[score if feasible else 0.0, float(macs)],
                user_attrs=attrs,
                system_attrs={"constraints:flops": float(macs - max_macs)},
            )
        )
        if len(batch) == 1000:
            study.add_trials(batch)
            batch = []
    if batch:
        study.add_trials(batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, cache_size: int, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSEARCH_")}
    env.update(STRUCTSEARCH_STUDY_CACHE_SIZE=str(cache_size), STRUCTSEARCH_HOME=str(home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "structsearch"), "serve", "--port", str(port), "--storage", url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


async def load(base: str, path: str, n: int, concurrency: int) -> dict[str, float]:
    """``n`` GETs of ``path`` with at most ``concurrency`` in flight; latency quantiles in ms."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=base, timeout=300, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        r = await client.get(path)  # warm-up (fills the cache when there is one)
        if r.status_code != 200:
            raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")

        async def one() -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                resp = await client.get(path)
                latencies.append(time.perf_counter() - t)
                errors += resp.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": q[49] * 1000, "p99": q[98] * 1000, "rps": n / wall, "errors": errors}


def setup(server_url: str, home: Path, trials: int) -> str:
    """A migrated database with a search named 'bench' holding ``trials`` finished trials."""
    url = fresh_database(server_url)
    upgrade(url)
    db = Database(url)
    key = create_key(db, "bench")
    db.dispose()
    proc, base = start_server(url, 64, home)
    try:
        r = httpx.post(f"{base}/api/v1/searches", json=SPEC, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        r.raise_for_status()
    finally:
        proc.terminate()
        proc.wait()
    study = optuna.load_study(study_name="bench", storage=url)
    t = time.perf_counter()
    add_trials(study, trials, study.user_attrs["max_macs"])
    print(f"inserted {trials} trials in {time.perf_counter() - t:.1f}s (study.add_trials, 1,000 per call)")
    return url


def bench_search_id(url: str) -> str:
    """The id of the 'bench' search (read from the service table, not over HTTP)."""
    db = Database(url)
    try:
        with db.session() as s:
            return str(s.scalar(select(Search.id).where(Search.name == "bench")))
    finally:
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="PostgreSQL server URL (a new database is created on it)")
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300, help="requests per endpoint with the cache")
    ap.add_argument(
        "--uncached-requests", type=int, default=20, help="requests per endpoint without the cache (0: skip)"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--reuse", metavar="URL", help="a database from an earlier run (its 'bench' search is measured again)"
    )
    args = ap.parse_args()

    server_url, pgdir = postgres_url(args.reuse or args.database_url)
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"structsearch-bench-{os.getpid()}"
    try:
        url = args.reuse or setup(server_url, home, args.trials)
        print(f"database: {url}")
        sid = bench_search_id(url)
        study = optuna.load_study(study_name="bench", storage=url)
        args.trials = len(study.get_trials(deepcopy=False))

        budget = study.user_attrs["max_macs"]
        paths = {
            "/pareto": f"/api/v1/searches/{sid}/pareto",
            "/best": f"/api/v1/searches/{sid}/best?budget_flops={budget}&budget_params=250k",
            "/trials": f"/api/v1/searches/{sid}/trials?limit=100&offset={args.trials // 2}",
            "/searches/{id}": f"/api/v1/searches/{sid}",
        }
        print(f"\n{args.trials} trials, concurrency {args.concurrency}, one uvicorn process, PostgreSQL on 127.0.0.1")
        print(f"{'endpoint':<16} {'cache':<6} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'errors':>6}")
        for cache_size, n in ((0, args.uncached_requests), (64, args.requests)):
            if n == 0:
                continue
            proc, base = start_server(url, cache_size, home)
            try:
                for label, path in paths.items():
                    m = asyncio.run(load(base, path, n, args.concurrency))
                    print(
                        f"{label:<16} {'on' if cache_size else 'off':<6} {n:>8} {m['p50']:>9.1f} {m['p99']:>9.1f} {m['rps']:>8.1f} {m['errors']:>6}"
                    )
                if cache_size:
                    # a trial finishes during a search: the next read fetches just that trial
                    add_trials(study, 1, study.user_attrs["max_macs"], seed=len(study.trials))
                    t = time.perf_counter()
                    httpx.get(f"{base}{paths['/pareto']}", timeout=300).raise_for_status()
                    print(
                        f"first /pareto after a trial finished (incremental refresh): {(time.perf_counter() - t) * 1000:.1f} ms"
                    )
            finally:
                proc.terminate()
                proc.wait()
    finally:
        if pgdir:
            subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "stop", pgdir], capture_output=True)


if __name__ == "__main__":
    main()
