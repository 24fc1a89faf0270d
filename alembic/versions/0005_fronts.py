"""Pareto fronts kept per search and cost axis: ``ss_fronts``; an index on baseline rows (issue 14).

Empty at first: the first ``/pareto`` of a search computes its front from ``ss_trials`` and keeps it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ss_fronts",
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("cost", sa.String(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "numbers", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["search_id"], ["ss_searches.id"], name=op.f("fk_ss_fronts_search_id_ss_searches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("search_id", "cost", name=op.f("pk_ss_fronts")),
    )
    baselines = sa.text("baseline IS NOT NULL")
    op.create_index(
        "ix_ss_trials_baseline", "ss_trials", ["search_id"], postgresql_where=baselines, sqlite_where=baselines
    )


def downgrade() -> None:
    op.drop_index("ix_ss_trials_baseline", table_name="ss_trials")
    op.drop_table("ss_fronts")
