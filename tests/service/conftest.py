"""Fixtures of the service tests: a real PostgreSQL, one fresh database per test, a tiny spec.

PostgreSQL: ``$STRUCTSEARCH_TEST_DATABASE_URL`` (``scripts/test.sh`` starts one), else a throwaway
cluster started here with ``scripts/postgres.sh``; the tests skip, saying why, only when neither
works. Each test gets its own database, copied from a migrated template (``CREATE DATABASE ...
TEMPLATE``: milliseconds instead of a migration per test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed (scripts/bootstrap.sh dev,service)")

import psycopg
from sqlalchemy import make_url

from structsearch.service.database import libpq_url
from structsearch.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def tiny_spec(name: str = "tiny", trials: int = 4, steps: int = 5, **overrides: Any) -> dict[str, Any]:
    """A search whose trials take well under a second on a CPU (digits at 8 px, ResNet-20)."""
    spec: dict[str, Any] = {
        "name": name,
        "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
        "data": {"train": "digits", "val_size": 0.2, "input_size": 8},
        "budget": {"flops": "60%"},
        "objectives": ["accuracy", "macs"],
        "sampler": "tpe",
        "trials": trials,
        "proxy": {"steps": steps, "batch_size": 32, "device": "cpu"},
        "seed": 0,
    }
    spec.update(overrides)
    return spec


class Postgres:
    """Creates and drops databases on the test cluster."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(libpq_url(self.url), autocommit=True)

    def url_of(self, name: str) -> str:
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url_of(name)

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def count(self, url: str, table: str) -> int:
        with psycopg.connect(libpq_url(url)) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    url = os.environ.get("STRUCTSEARCH_TEST_DATABASE_URL")
    started: str | None = None
    if not url:
        script = ROOT / "scripts" / "postgres.sh"
        try:
            out = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"no PostgreSQL for the service tests: scripts/postgres.sh could not run ({e})")
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"no PostgreSQL for the service tests: scripts/postgres.sh failed: {last}")
        exports = dict(re.findall(r"export (\w+)='([^']*)'", out.stdout))
        url, started = exports["STRUCTSEARCH_TEST_DATABASE_URL"], exports.get("STRUCTSEARCH_TEST_PGDIR")
    try:
        psycopg.connect(libpq_url(url), connect_timeout=10).close()
    except psycopg.Error as e:
        pytest.skip(f"no PostgreSQL for the service tests: cannot connect to {url}: {str(e).strip().splitlines()[0]}")
    try:
        yield Postgres(url)
    finally:
        if started:
            subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "stop", started], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def migrated_template(postgres: Postgres) -> Iterator[str]:
    """A database with every migration applied, copied by each test."""
    from structsearch.service.migrations import upgrade

    name = f"ss_template_{uuid.uuid4().hex[:8]}"
    upgrade(postgres.create(name))
    yield name
    postgres.drop(name)


@pytest.fixture
def db_url(postgres: Postgres, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"ss_test_{uuid.uuid4().hex[:10]}"
    url = postgres.create(name, template=migrated_template)
    yield url
    postgres.drop(name)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def make_settings(db_url: str, artifacts: Path, data_root: Path, **changes: Any) -> ServiceSettings:
    """Settings with every field explicit, so a developer's STRUCTSEARCH_* variables do not leak in."""
    values: dict[str, Any] = dict(
        database_url=db_url,
        artifacts=artifacts,
        open_reads=False,
        data_roots=[data_root],
        max_trials=50,
        trial_heartbeat_s=1,
        worker_heartbeat_s=1.0,
        worker_stalled_after_s=4.0,
    )
    values.update(changes)
    return ServiceSettings(**values)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, data_root: Path) -> ServiceSettings:
    return make_settings(db_url, tmp_path / "artifacts", data_root)


@pytest.fixture
def key(settings: ServiceSettings) -> str:
    """A user API key on the test database."""
    from structsearch.service.apikeys import create_key
    from structsearch.service.database import Database

    db = Database(settings.database_url)
    try:
        return create_key(db, "tests")
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def service_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A STRUCTSEARCH_HOME shared by the tests that run trials, with the tiny teacher trained once.

    Workers (subprocesses) get it through the environment; training the teacher here first means
    they never race to train it.
    """
    home = tmp_path_factory.mktemp("structsearch-home")
    saved = {k: os.environ.get(k) for k in ("STRUCTSEARCH_HOME", "STRUCTSEARCH_ARTIFACTS")}
    os.environ["STRUCTSEARCH_HOME"] = str(home)
    os.environ["STRUCTSEARCH_ARTIFACTS"] = str(home / "artifacts")
    try:
        from structsearch.search import parse_study_spec
        from structsearch.search.context import build_context, plan_search

        build_context(plan_search(parse_study_spec(tiny_spec())))
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(home, ignore_errors=True)
