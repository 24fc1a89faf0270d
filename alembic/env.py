"""Alembic environment of the service's own tables.

The database also holds Optuna's tables (``studies``, ``trials``, ... and Optuna's own
``alembic_version``) and procrastinate's (``procrastinate_*``). So:

* our version table is ``ss_alembic_version`` (Optuna's ``alembic_version`` is Optuna's);
* autogenerate only looks at ``ss_`` tables (``include_name``/``include_object`` from
  :mod:`structsearch.service.migrations`);
  without the filter it would propose dropping every Optuna and procrastinate table.

The URL comes from the caller (``structsearch db upgrade --storage``, via
``config.attributes["database_url"]``), else from the service settings (environment).
"""

from __future__ import annotations

from sqlalchemy import create_engine

from alembic import context
from structsearch.service.migrations import VERSION_TABLE, include_name, include_object
from structsearch.service.tables import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return url
    from structsearch.service.settings import ServiceSettings

    return ServiceSettings().database_url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(database_url())
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
