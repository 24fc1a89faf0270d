"""``structsearch db upgrade``: our tables with our own version table, Optuna's and procrastinate's
alongside, idempotent, and an Alembic environment that never touches Optuna's tables."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url
from sqlalchemy.exc import IntegrityError

from structsearch.service.database import libpq_url
from structsearch.service.migrations import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    include_name,
    include_object,
    upgrade,
)
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import Base
from tests.cli_helpers import one_line_error
from tests.service.conftest import Postgres


def test_upgrade_creates_three_schemas_and_is_idempotent(postgres: Postgres) -> None:
    name = f"ss_mig_{uuid.uuid4().hex[:8]}"
    url = postgres.create(name)
    try:
        first = upgrade(url)
        assert upgrade(url) == first  # second run: nothing to do, nothing broken
        assert first["structsearch"] == head_revision(url) == "0007"
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"ss_searches", "ss_api_keys", VERSION_TABLE} <= tables
        assert {"studies", "trials", "alembic_version"} <= tables  # Optuna's, with Optuna's own version table
        assert {"procrastinate_jobs", "procrastinate_workers"} <= tables
        with engine.connect() as conn:
            assert current_revision(engine) == "0007"
            optuna_rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        assert optuna_rev == optuna.storages.RDBStorage(url).get_current_version()

        # autogenerate with env.py's filters sees our models exactly, and nothing of Optuna's
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "include_name": include_name,
                    "include_object": include_object,
                    "compare_type": True,
                    "version_table": VERSION_TABLE,
                },
            )
            assert compare_metadata(ctx, Base.metadata) == []
            # without the filter it would drop every Optuna and procrastinate table
            unfiltered = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            drops = {d[1].name for d in compare_metadata(unfiltered, Base.metadata) if d[0] == "remove_table"}
            assert {"studies", "trials", "procrastinate_jobs"} <= drops
        engine.dispose()
    finally:
        postgres.drop(name)


def test_sqlite_keeps_working(tmp_path: Path) -> None:
    """The embedded default: our tables and Optuna's, no job queue (PostgreSQL only)."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert upgrade(url)["structsearch"] == "0007"
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"ss_searches", "studies"} <= tables and not any(t.startswith("procrastinate") for t in tables)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0003_key_scope_expiry_last_use_up_and_down(postgres: Postgres, tmp_path: Path, backend: str) -> None:
    """Keys made before 0003 become user keys that never expire; downgrading drops the columns
    (and the scope check) and keeps the keys."""
    from alembic import command
    from structsearch.service.migrations import alembic_config

    name = f"ss_mig_{uuid.uuid4().hex[:8]}"
    url = postgres.create(name) if backend == "postgresql" else f"sqlite:///{tmp_path / 'keys.db'}"
    engine = create_engine(url)
    try:
        command.upgrade(alembic_config(url), "0002")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO ss_api_keys (name, key_hash, prefix, created_at) VALUES ('old', 'h', 'ss_abc', CURRENT_TIMESTAMP)"
            )
        command.upgrade(alembic_config(url), "0003")
        columns = {c["name"] for c in inspect(engine).get_columns("ss_api_keys")}
        assert {"scope", "expires_at", "last_used_at"} <= columns
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT scope, expires_at FROM ss_api_keys").one() == ("user", None)
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql("UPDATE ss_api_keys SET scope = 'root'")
        command.downgrade(alembic_config(url), "0002")
        columns = {c["name"] for c in inspect(engine).get_columns("ss_api_keys")}
        assert not {"scope", "expires_at", "last_used_at"} & columns
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT name FROM ss_api_keys").scalar() == "old"
            assert current_revision(engine) == "0002"
        command.upgrade(alembic_config(url), "head")
        assert current_revision(engine) == "0007"
    finally:
        engine.dispose()
        if backend == "postgresql":
            postgres.drop(name)


def test_0006_and_0007_fill_from_optunas_attributes_up_and_down(postgres: Postgres) -> None:
    """0006 adds ss_trials.map50, filled from each trial's ``map50`` user attribute (null when it
    has none), and drops the fronts 0005's readers kept (their ``seq`` with them); downgrading
    drops map50 and gives ss_fronts its ``seq`` back, empty. 0007 adds the searches' teacher
    scores, filled from their study's ``teacher_score`` attribute, and their warnings (none)."""
    from alembic import command
    from structsearch.service.migrations import alembic_config

    name = f"ss_mig_{uuid.uuid4().hex[:8]}"
    url = postgres.create(name)
    engine = create_engine(url)
    try:
        study = optuna.create_study(study_name="det", storage=url)  # Optuna's tables, with two trials
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"map50": 62.25}))
        study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs={"score": 2.0}))
        command.upgrade(alembic_config(url), "0005")
        sid = uuid.uuid4()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO ss_searches (id, name, requested_name, spec, status, trials_requested, created_at, "
                f"updated_at) VALUES ('{sid}', 'det', 'det', '{{}}', 'done', 2, now(), now())"
            )
            for number, trial_id in conn.exec_driver_sql("SELECT number, trial_id FROM trials ORDER BY number"):
                conn.exec_driver_sql(
                    "INSERT INTO ss_trials (search_id, number, trial_id, state, trained, feasible, scored, seq) "
                    f"VALUES ('{sid}', {number}, {trial_id}, 'complete', true, true, false, {number})"
                )
            conn.exec_driver_sql(f"INSERT INTO ss_fronts VALUES ('{sid}', 'macs', 1, '[0]')")
        command.upgrade(alembic_config(url), "0006")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT map50 FROM ss_trials ORDER BY number").scalars().all() == [62.25, None]
            assert conn.exec_driver_sql("SELECT count(*) FROM ss_fronts").scalar() == 0
        assert "seq" not in {c["name"] for c in inspect(engine).get_columns("ss_fronts")}
        # 0007: the search's teacher score from its study's attribute, and no warnings yet
        study.set_user_attr("teacher_score", 91.5)
        command.upgrade(alembic_config(url), "0007")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT teacher_score, warnings FROM ss_searches").one() == (91.5, [])
        command.downgrade(alembic_config(url), "0006")
        assert not {"teacher_score", "warnings"} & {c["name"] for c in inspect(engine).get_columns("ss_searches")}
        command.downgrade(alembic_config(url), "0005")
        assert "map50" not in {c["name"] for c in inspect(engine).get_columns("ss_trials")}
        assert "seq" in {c["name"] for c in inspect(engine).get_columns("ss_fronts")}
        command.upgrade(alembic_config(url), "head")
        assert current_revision(engine) == "0007"
    finally:
        engine.dispose()
        postgres.drop(name)


def test_upgrade_creates_a_read_only_dashboard_role(postgres: Postgres) -> None:
    """With a password, `db upgrade` makes a role that reads Optuna's tables and cannot change
    them, nor read ours (API-key hashes, specs); without one, no role (issue 13)."""
    name, role = f"ss_dash_{uuid.uuid4().hex[:8]}", f"dash_{uuid.uuid4().hex[:8]}"
    url = postgres.create(name)
    try:
        upgrade(url, None, role)
        with psycopg.connect(libpq_url(postgres.url), autocommit=True) as conn:
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        upgrade(url, "s3cret'quoted", role)
        upgrade(url, "s3cret'quoted", role)  # idempotent
        storage = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name="s", storage=storage).add_trial(optuna.trial.create_trial(value=1.0))
        storage.engine.dispose()
        as_role = make_url(url).set(username=role, password="s3cret'quoted")
        with psycopg.connect(libpq_url(as_role.render_as_string(hide_password=False)), autocommit=True) as conn:
            assert conn.execute("SELECT study_name FROM studies").fetchall() == [("s",)]
            assert conn.execute("SELECT count(*) FROM trials").fetchone() == (1,)
            for statement in (
                "DELETE FROM studies",
                "UPDATE studies SET study_name = 'x'",
                "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (1, 0, 2, 'FINITE')",
                "SELECT * FROM ss_api_keys",
                "SELECT * FROM procrastinate_jobs",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        postgres.drop(name)
        with psycopg.connect(libpq_url(postgres.url), autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_dashboard_without_the_role_stays_on_localhost(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without STRUCTSEARCH_DASHBOARD_PASSWORD the dashboard would connect as the service's
    (writable) user: it refuses any interface but localhost, before opening anything."""
    monkeypatch.delenv("STRUCTSEARCH_DASHBOARD_PASSWORD", raising=False)
    one_line_error(["dashboard", "--host", "0.0.0.0", "--storage", postgres.url], "STRUCTSEARCH_DASHBOARD_PASSWORD")
    settings = ServiceSettings(database_url="postgresql+psycopg://owner:pw@db:5432/ss", dashboard_password="ro")
    assert settings.dashboard_url() == "postgresql+psycopg://structsearch_dashboard:ro@db:5432/ss"
    assert ServiceSettings(database_url=postgres.url, dashboard_password="").dashboard_url() is None
