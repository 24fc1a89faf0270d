"""Service tables: API keys and searches.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ss_api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ss_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_ss_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_ss_api_keys_name")),
    )
    op.create_table(
        "ss_searches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("requested_name", sa.String(length=100), nullable=False),
        sa.Column("spec", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trials_requested", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'cancelled', 'failed')",
            name=op.f("ck_ss_searches_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["ss_api_keys.id"], name=op.f("fk_ss_searches_api_key_id_ss_api_keys"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ss_searches")),
        sa.UniqueConstraint("name", name=op.f("uq_ss_searches_name")),
    )
    op.create_index("ix_ss_searches_created_at", "ss_searches", ["created_at"], unique=False)
    op.create_index("ix_ss_searches_status", "ss_searches", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ss_searches_status", table_name="ss_searches")
    op.drop_index("ix_ss_searches_created_at", table_name="ss_searches")
    op.drop_table("ss_searches")
    op.drop_table("ss_api_keys")
