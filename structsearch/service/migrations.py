"""``structsearch db upgrade``: bring a database up to what the service needs, explicitly.

Three schemas share the database, each created here and nowhere else at run time:

1. ours (``ss_*``), by Alembic with its own version table (``alembic/``);
2. procrastinate's job queue, by our Alembic revision 0002 (PostgreSQL only);
3. Optuna's (``studies``, ``trials``, ...), by instantiating ``optuna.storages.RDBStorage``,
   which creates missing tables and checks their version. optuna-dashboard opens the database
   read-only and creates nothing, so this must run before it.

And, on PostgreSQL when a password for it is given, the dashboard's read-only role
(:func:`ensure_dashboard_role`): optuna-dashboard has routes that delete and rename studies and
`tell` trials, with no authentication, so read-only must be the database's doing, not the UI's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from alembic import command
from structsearch.errors import StructsearchError, one_line
from structsearch.search.storage import hide_secrets, safe_url

log = logging.getLogger("structsearch.db")

VERSION_TABLE = "ss_alembic_version"
#: Optuna's own schema-version table (Alembic's default name), read by every Optuna storage.
OPTUNA_VERSION_TABLE = "alembic_version"
#: Our tables' prefix: the only tables Alembic may reflect, compare or change.
PREFIX = "ss_"


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic ``include_name``: reflect only our tables (and everything inside them)."""
    if type_ == "table":
        return name is not None and name.startswith(PREFIX)
    return True


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic ``include_object``: compare only our tables; columns, indexes, constraints follow
    their table. Without it, autogenerate would propose dropping Optuna's and procrastinate's."""
    if type_ == "table":
        return name is not None and name.startswith(PREFIX)
    table = getattr(obj, "table", None)
    if table is not None:
        return table.name.startswith(PREFIX)
    return True


def project_root() -> Path:
    """The source tree holding ``alembic/`` (the package is installed editable, as in the image)."""
    return Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    root = project_root()
    ini = root / "alembic.ini"
    if not (root / "alembic" / "env.py").is_file():
        raise StructsearchError(
            f"migrations not found under {root / 'alembic'}; install structsearch from its source tree (pip install -e .)"
        )
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(root / "alembic"))
    cfg.attributes["database_url"] = url
    return cfg


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """Our schema's revision in the database, or None before the first upgrade."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(
    url: str, dashboard_password: str | None = None, dashboard_role: str = "structsearch_dashboard"
) -> dict[str, str | None]:
    """Apply every migration (idempotent); returns the revisions now in place.

    With ``dashboard_password`` (PostgreSQL), also create or update the dashboard's read-only role.
    """
    try:
        command.upgrade(alembic_config(url), "head")
        storage = optuna.storages.RDBStorage(url)  # creates Optuna's tables when missing
        optuna_version = storage.get_current_version()
        storage.engine.dispose()
        if dashboard_password is None:
            log.info("STRUCTSEARCH_DASHBOARD_PASSWORD is not set: no read-only dashboard role created")
        elif not url.startswith("postgresql"):
            log.info("the dashboard's read-only role needs PostgreSQL; skipped on %s", safe_url(url))
        else:
            ensure_dashboard_role(url, dashboard_role, dashboard_password)
    except StructsearchError:
        raise
    except Exception as e:  # noqa: BLE001 - drivers raise many types for unreachable servers
        raise StructsearchError(f"cannot migrate {safe_url(url)}: {hide_secrets(one_line(e), url)}") from None
    engine = create_engine(url)
    try:
        return {"structsearch": current_revision(engine), "optuna": optuna_version}
    finally:
        engine.dispose()


def optuna_tables() -> list[str]:
    """Optuna's tables (its models' and its version table): all the dashboard may read."""
    from optuna.storages._rdb import models

    return sorted([*models.BaseModel.metadata.tables, OPTUNA_VERSION_TABLE])


def ensure_dashboard_role(url: str, role: str, password: str) -> None:
    """Create ``role`` (or reset its password) with ``SELECT`` on Optuna's tables and nothing else.

    Idempotent. Any other privilege the role holds on this database's tables (ours hold API-key
    hashes and specs; procrastinate's the queue) is revoked, so re-running after a grant by hand
    puts it back to read-only.
    """
    import psycopg
    from psycopg import sql

    from structsearch.service.database import libpq_url

    ident = sql.Identifier(role)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                ident, sql.Literal(password)
            )
        )
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database), ident))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident))
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident))
        conn.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in optuna_tables())
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, ident))
    log.info("read-only dashboard role %s: SELECT on Optuna's tables only", role)
