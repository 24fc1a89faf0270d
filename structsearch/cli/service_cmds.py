"""``structsearch db | apikey | serve | worker | dashboard``: running the service.

All of them read :class:`~structsearch.service.settings.ServiceSettings` from the environment
(``STRUCTSEARCH_DATABASE_URL``, ...); ``--storage URL`` overrides the database. The service's
packages are an extra (``pip install 'structsearch[service]'``), imported only when a command runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from structsearch.cli._common import Format, FormatOpt, console, print_json
from structsearch.errors import StructsearchError, one_line

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the service database (default: $STRUCTSEARCH_DATABASE_URL, else $STRUCTSEARCH_STORAGE)",
    ),
]

db_app = typer.Typer(help="The service database: migrations, the trials read model.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys that may submit and cancel searches.", no_args_is_help=True)


def _settings(storage: str | None):
    try:
        from structsearch.service.settings import ServiceSettings
    except ImportError as e:
        raise StructsearchError(
            f"the service needs its extra: pip install 'structsearch[service]' ({e.name} is missing)"
        ) from None
    try:
        return ServiceSettings().with_database(storage)
    except ValueError as e:  # pydantic's ValidationError: a malformed STRUCTSEARCH_* variable
        raise StructsearchError(f"invalid service settings: {one_line(e)}") from None


def _safe_url(url: str) -> str:
    """The URL as messages show it: password hidden (``search.storage.safe_url``)."""
    from structsearch.search.storage import safe_url

    return safe_url(url)


def _hide(text: str, url: str) -> str:
    """A driver's message with the URL and its password hidden (``search.storage.hide_secrets``)."""
    from structsearch.search.storage import hide_secrets

    return hide_secrets(text, url)


@contextmanager
def _database(url: str) -> Iterator[Any]:
    """The service database at ``url``, its connections closed after the block."""
    from structsearch.service.database import Database

    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


@db_app.command("upgrade")
def db_upgrade(storage: DatabaseOpt = None) -> None:
    """Create or migrate the service's tables, procrastinate's job queue and Optuna's tables."""

    from structsearch.service.migrations import upgrade

    _logging()
    settings = _settings(storage)
    password = settings.dashboard_password
    revisions = upgrade(
        settings.database_url, password.get_secret_value() if password else None, settings.dashboard_role
    )
    console.print(
        f"database migrated: structsearch {revisions['structsearch']}, optuna {revisions['optuna']}",
        highlight=False,
    )


SearchOpt = Annotated[str | None, typer.Option("--search", help="Only this search (its id); default: every search")]
#: ``db check`` prints at most this many differences.
CHECK_LINES = 50


@contextmanager
def _with_read_model(storage: str | None) -> Iterator[tuple[Any, Any]]:
    """The service database and Optuna's storage on it, both closed after the block."""
    from structsearch.search.storage import open_storage

    url = _settings(storage).database_url
    with _database(url) as db:
        optuna_storage = open_storage(url, create=False)
        try:
            yield db, optuna_storage
        finally:
            optuna_storage.engine.dispose()


@db_app.command("backfill")
def db_backfill(search: SearchOpt = None, storage: DatabaseOpt = None) -> None:
    """Fill the trials read model (ss_trials, the counts on ss_searches) from Optuna's storage.

    Idempotent: rows already right are left alone, counts are set from the rows. Run it once after
    `structsearch db upgrade` to 0004 or later on a database with searches, or to repair what `db check` reports.
    """

    from structsearch.service.readmodel import backfill, chosen_searches

    with _with_read_model(storage) as (db, optuna_storage):
        for row, written in backfill(db, optuna_storage, chosen_searches(db, search)):
            what = "no study (its submission failed)" if written is None else f"{written} trial rows written"
            console.print(f"search {row.id} ({row.name}): {what}", highlight=False)


@db_app.command("check")
def db_check(search: SearchOpt = None, storage: DatabaseOpt = None) -> None:
    """Compare the trials read model with Optuna's trials: one line per difference, exit 1 on any."""

    from structsearch.service.readmodel import chosen_searches, drift

    with _with_read_model(storage) as (db, optuna_storage):
        searches = chosen_searches(db, search)
        lines = [line for row in searches for line in drift(db, optuna_storage, row)]
    for line in lines[:CHECK_LINES]:
        print(line)
    if len(lines) > CHECK_LINES:
        print(f"... and {len(lines) - CHECK_LINES} more differences")
    print(f"{len(searches)} searches checked, {len(lines)} differences")
    if lines:
        raise typer.Exit(1)


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for (unique)")],
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: sees and cancels every search, not only its own")
    ] = False,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 30d, 12h, 90m or 2w (default: never expires)")
    ] = None,
    storage: DatabaseOpt = None,
) -> None:
    """Create a key and print it. It is shown only this once; only its hash is stored."""

    from structsearch.service.apikeys import create_key, parse_lifetime
    from structsearch.service.tables import KeyScope

    lifetime = parse_lifetime(expires) if expires is not None else None
    url = _settings(storage).database_url
    with _database(url) as db:
        try:
            key = create_key(db, name, KeyScope.admin if admin else KeyScope.user, lifetime)
        except StructsearchError:
            raise
        except Exception as e:  # noqa: BLE001 - unreachable or unmigrated database
            raise StructsearchError(
                f"cannot store the key: {_hide(one_line(e), url)} (did you run `structsearch db upgrade`?)"
            ) from None
    print(key)


#: What ``apikey list`` shows of a key (never the key or its hash).
_KEY_TIMES = ("created_at", "expires_at", "last_used_at", "revoked_at")
_KEY_FIELDS = ("name", "prefix", "scope", *_KEY_TIMES)


@apikey_app.command("list")
def apikey_list(storage: DatabaseOpt = None, format: FormatOpt = Format.table) -> None:
    """List keys (name, prefix, scope, created, expires, last used, revoked); never the keys themselves."""

    from rich.table import Table

    from structsearch.service.repository import ApiKeyRepository

    with _database(_settings(storage).database_url) as db, db.session() as s:
        rows: list[dict[str, Any]] = [{f: getattr(k, f) for f in _KEY_FIELDS} for k in ApiKeyRepository(s).all()]
    if format is Format.json:
        print_json(rows)
        return
    table = Table("name", "prefix", "scope", "created", "expires", "last used", "revoked")
    for r in rows:
        table.add_row(r["name"], r["prefix"] + "...", r["scope"], *(str(r[k] or "-") for k in _KEY_TIMES))
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(name: Annotated[str, typer.Option("--name")], storage: DatabaseOpt = None) -> None:
    """Revoke a key by name: it stops working at once."""

    from structsearch.service.repository import ApiKeyRepository

    with _database(_settings(storage).database_url) as db, db.session() as s:
        if not ApiKeyRepository(s).revoke(name):
            raise StructsearchError(f"no active API key named '{name}'")
    console.print(f"revoked API key '{name}'")


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    storage: DatabaseOpt = None,
) -> None:
    """Serve the REST API (uvicorn; OpenAPI docs at /docs)."""

    settings = _settings(storage)
    import uvicorn

    from api import create_app

    _logging()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", proxy_headers=True)


def worker(
    storage: DatabaseOpt = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Trials this worker runs at once")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name in logs (default: host-pid)")] = None,
) -> None:
    """Run queued trials of submitted searches until SIGTERM (which lets running trials finish)."""

    settings = _settings(storage)
    if not settings.is_postgres:
        raise StructsearchError(
            f"workers need the PostgreSQL service database, not {_safe_url(settings.database_url)}; pass --storage postgresql+psycopg://..."
        )
    from structsearch.service.worker import run_worker

    _logging()
    run_worker(settings, concurrency=concurrency, name=name)


def dashboard(
    storage: DatabaseOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
) -> None:
    """Serve optuna-dashboard on the service database, as its read-only role (an operator tool).

    optuna-dashboard has delete, rename and `tell` routes and no authentication: with
    STRUCTSEARCH_DASHBOARD_PASSWORD set (and `structsearch db upgrade` run with it) it connects as
    the role that can only read Optuna's tables; without it, it connects as the service's own user
    and may only listen on localhost.
    """

    from sqlalchemy import create_engine, inspect

    from structsearch.service.database import libpq_url

    settings = _settings(storage)
    readonly = settings.dashboard_url() if settings.is_postgres else None
    if readonly is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise StructsearchError(
            "without the read-only role the dashboard can change studies: set STRUCTSEARCH_DASHBOARD_PASSWORD "
            "(and run `structsearch db upgrade`) to serve it beyond localhost"
        )
    if readonly is None:
        console.print("[yellow]dashboard connected as the service user (writable); localhost only[/yellow]")
    url = libpq_url(readonly or settings.database_url)  # psycopg2 driver, as optuna-dashboard expects
    engine = create_engine(url)
    try:
        missing = "studies" not in inspect(engine).get_table_names()
    except Exception as e:  # noqa: BLE001 - unreachable database
        raise StructsearchError(f"cannot open {_safe_url(url)}: {_hide(one_line(e), url)}") from None
    finally:
        engine.dispose()
    if missing:
        raise StructsearchError("the database has no Optuna tables; run `structsearch db upgrade` first")
    from optuna_dashboard import run_server

    console.print(f"optuna-dashboard on http://{host}:{port}", highlight=False)
    run_server(url, host=host, port=port)
