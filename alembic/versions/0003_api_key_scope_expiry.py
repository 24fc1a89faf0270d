"""API keys: a scope (user or admin), an optional expiry and the last time they were used.

Existing keys become ``user`` keys that never expire: they keep working, and see only the
searches they submitted from now on.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a CHECK constraint to an existing table (batch copies it there)
    with op.batch_alter_table("ss_api_keys") as batch:
        batch.add_column(sa.Column("scope", sa.String(length=16), server_default="user", nullable=False))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint(op.f("ck_ss_api_keys_scope_known"), "scope IN ('user', 'admin')")


def downgrade() -> None:
    with op.batch_alter_table("ss_api_keys") as batch:
        batch.drop_constraint(op.f("ck_ss_api_keys_scope_known"), type_="check")
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
        batch.drop_column("scope")
