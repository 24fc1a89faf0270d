"""``structsearch db | apikey | serve | worker | dashboard``: running the service.

All of them read :class:`~structsearch.service.settings.ServiceSettings` from the environment
(``STRUCTSEARCH_DATABASE_URL``, ...); ``--storage URL`` overrides the database. The service's
packages are an extra (``pip install 'structsearch[service]'``), imported only when a command runs.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from structsearch.cli._common import Format, FormatOpt, console, print_json, run_guarded
from structsearch.errors import StructsearchError, one_line

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the service database (default: $STRUCTSEARCH_DATABASE_URL, else $STRUCTSEARCH_STORAGE)",
    ),
]

db_app = typer.Typer(help="The service database: migrations.", no_args_is_help=True)
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


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


@db_app.command("upgrade")
def db_upgrade(storage: DatabaseOpt = None) -> None:
    """Create or migrate the service's tables, procrastinate's job queue and Optuna's tables."""

    def body() -> None:
        from structsearch.service.migrations import upgrade

        settings = _settings(storage)
        revisions = upgrade(settings.database_url)
        console.print(
            f"database migrated: structsearch {revisions['structsearch']}, optuna {revisions['optuna']}",
            highlight=False,
        )

    run_guarded(body)


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for (unique)")],
    storage: DatabaseOpt = None,
) -> None:
    """Create a key and print it. It is shown only this once; only its hash is stored."""

    def body() -> None:
        from structsearch.service.apikeys import create_key
        from structsearch.service.database import Database

        db = Database(_settings(storage).database_url)
        try:
            key = create_key(db, name)
        except StructsearchError:
            raise
        except Exception as e:  # noqa: BLE001 - unreachable or unmigrated database
            raise StructsearchError(
                f"cannot store the key: {one_line(e)} (did you run `structsearch db upgrade`?)"
            ) from None
        finally:
            db.dispose()
        print(key)

    run_guarded(body)


@apikey_app.command("list")
def apikey_list(storage: DatabaseOpt = None, format: FormatOpt = Format.table) -> None:
    """List keys (name, prefix, created, revoked); never the keys themselves."""

    def body() -> None:
        from rich.table import Table

        from structsearch.service.database import Database
        from structsearch.service.repository import ApiKeyRepository

        db = Database(_settings(storage).database_url)
        try:
            with db.session() as s:
                rows: list[dict[str, Any]] = [
                    {"name": k.name, "prefix": k.prefix, "created_at": k.created_at, "revoked_at": k.revoked_at}
                    for k in ApiKeyRepository(s).all()
                ]
        finally:
            db.dispose()
        if format is Format.json:
            print_json(rows)
            return
        table = Table("name", "prefix", "created", "revoked")
        for r in rows:
            table.add_row(r["name"], r["prefix"] + "...", str(r["created_at"]), str(r["revoked_at"] or "-"))
        console.print(table)

    run_guarded(body)


@apikey_app.command("revoke")
def apikey_revoke(name: Annotated[str, typer.Option("--name")], storage: DatabaseOpt = None) -> None:
    """Revoke a key by name: it stops working at once."""

    def body() -> None:
        from structsearch.service.database import Database
        from structsearch.service.repository import ApiKeyRepository

        db = Database(_settings(storage).database_url)
        try:
            with db.session() as s:
                if not ApiKeyRepository(s).revoke(name):
                    raise StructsearchError(f"no active API key named '{name}'")
        finally:
            db.dispose()
        console.print(f"revoked API key '{name}'")

    run_guarded(body)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    storage: DatabaseOpt = None,
) -> None:
    """Serve the REST API (uvicorn; OpenAPI docs at /docs)."""

    def body() -> None:
        settings = _settings(storage)
        import uvicorn

        from api import create_app

        _logging()
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", proxy_headers=True)

    run_guarded(body)


def worker(
    storage: DatabaseOpt = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Trials this worker runs at once")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name in logs (default: host-pid)")] = None,
) -> None:
    """Run queued trials of submitted searches until SIGTERM (which lets running trials finish)."""

    def body() -> None:
        settings = _settings(storage)
        if not settings.is_postgres:
            raise StructsearchError(
                f"workers need the PostgreSQL service database, not {settings.database_url}; pass --storage postgresql+psycopg://..."
            )
        from structsearch.service.worker import run_worker

        _logging()
        run_worker(settings, concurrency=concurrency, name=name)

    run_guarded(body)


def dashboard(
    storage: DatabaseOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
) -> None:
    """Serve optuna-dashboard on the service database (read-only; run `structsearch db upgrade` first)."""

    def body() -> None:
        from sqlalchemy import create_engine, inspect

        from structsearch.service.database import libpq_url

        url = libpq_url(_settings(storage).database_url)  # psycopg2 driver, as optuna-dashboard expects
        engine = create_engine(url)
        try:
            missing = "studies" not in inspect(engine).get_table_names()
        except Exception as e:  # noqa: BLE001 - unreachable database
            raise StructsearchError(f"cannot open {url}: {one_line(e)}") from None
        finally:
            engine.dispose()
        if missing:
            raise StructsearchError("the database has no Optuna tables; run `structsearch db upgrade` first")
        from optuna_dashboard import run_server

        console.print(f"optuna-dashboard on http://{host}:{port}", highlight=False)
        run_server(url, host=host, port=port)

    run_guarded(body)
