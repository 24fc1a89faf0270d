"""The trials read model: ``ss_trials`` and trial counts on ``ss_searches`` (issue 14).

Existing searches get zero counts and no trial rows: ``structsearch db backfill`` fills both from
Optuna's storage (``structsearch db check`` then reports no drift).

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COUNTS = (
    "n_trials",
    "n_waiting",
    "n_running",
    "n_complete",
    "n_pruned",
    "n_failed",
    "n_copied",
    "n_own_complete",
    "n_trained",
    "n_over_budget",
    "n_feasible",
)
_SCORED = sa.text("scored")


def upgrade() -> None:
    with op.batch_alter_table("ss_searches") as batch:
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("best_number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("best_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("trials_changed_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.CreateSequence(sa.Sequence("ss_trials_seq")))
    op.create_table(
        "ss_trials",
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec_key", sa.String(length=64), nullable=True),
        sa.Column("spec", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True),
        sa.Column("macs", sa.BigInteger(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("latency_device", sa.Text(), nullable=True),
        sa.Column("latency_runtime", sa.String(length=32), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_device", sa.Text(), nullable=True),
        sa.Column("resolution", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("feasible", sa.Boolean(), nullable=False),
        sa.Column("scored", sa.Boolean(), nullable=False),
        sa.Column("baseline", sa.String(length=32), nullable=True),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("copied_from", sa.String(length=200), nullable=True),
        sa.Column("artifact", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "state IN ('waiting', 'running', 'complete', 'pruned', 'fail')", name=op.f("ck_ss_trials_state_known")
        ),
        sa.ForeignKeyConstraint(
            ["search_id"], ["ss_searches.id"], name=op.f("fk_ss_trials_search_id_ss_searches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("search_id", "number", name=op.f("pk_ss_trials")),
    )
    op.create_index(
        "ix_ss_trials_best",
        "ss_trials",
        ["search_id", sa.text("score DESC"), "macs", "number"],
        postgresql_where=_SCORED,
        sqlite_where=_SCORED,
    )
    op.create_index(
        "ix_ss_trials_macs", "ss_trials", ["search_id", "macs"], postgresql_where=_SCORED, sqlite_where=_SCORED
    )
    op.create_index(
        "ix_ss_trials_params", "ss_trials", ["search_id", "params"], postgresql_where=_SCORED, sqlite_where=_SCORED
    )
    op.create_index("ix_ss_trials_state", "ss_trials", ["search_id", "state", "number"])
    op.create_index("ix_ss_trials_seq", "ss_trials", ["search_id", "seq"])


def downgrade() -> None:
    op.drop_table("ss_trials")  # its indexes go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence("ss_trials_seq")))
    with op.batch_alter_table("ss_searches") as batch:
        for name in ("trials_changed_at", "best_score", "best_number", *reversed(COUNTS)):
            batch.drop_column(name)
