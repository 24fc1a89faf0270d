"""procrastinate's job-queue schema (PostgreSQL only).

Applied through our migrations so that `structsearch db upgrade` is the one deploy step. The SQL
is the installed procrastinate's own schema file; the `service` extra pins procrastinate to one
minor version, and moving to a version with schema changes means a new revision here that runs
that version's files from ``procrastinate/sql/migrations``. Skipped on SQLite (no queue there:
the embedded default never uses the service) and when the schema is already present.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
        return
    from procrastinate.schema import SchemaManager

    # no_parameters: the schema contains literal '%' (in RAISE messages); pass it to the driver as is.
    bind.exec_driver_sql(SchemaManager.get_schema(), execution_options={"no_parameters": True})


def downgrade() -> None:
    # procrastinate ships no uninstall script; its tables hold no data of ours worth migrating.
    # Drop them by hand (DROP TABLE procrastinate_jobs ... CASCADE) if you really want them gone.
    pass
