"""``ss_trials.map50`` (detection studies' mAP@.5); fronts kept by the writers of ``ss_trials`` (issue 14).

``map50`` is filled from each trial's ``map50`` user attribute in Optuna's tables (on PostgreSQL,
where the read model lives; elsewhere ``structsearch db backfill`` fills it). ``ss_fronts``
loses ``seq``: the read model's writer now keeps each front up to date as it writes rows, so a
reader no longer folds in rows changed since. Fronts kept by readers before this revision may
miss rows written since they were kept: they are dropped, and recomputed on the next write or
read of their search.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_FILL_MAP50 = """
UPDATE ss_trials r SET map50 = CAST(a.value_json AS DOUBLE PRECISION)
FROM trial_user_attributes a
WHERE a.trial_id = r.trial_id AND a.key = 'map50' AND a.value_json <> 'null'
"""


def upgrade() -> None:
    with op.batch_alter_table("ss_trials") as batch:
        batch.add_column(sa.Column("map50", sa.Float(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and sa.inspect(bind).has_table("trial_user_attributes"):
        op.execute(_FILL_MAP50)
    op.execute("DELETE FROM ss_fronts")
    with op.batch_alter_table("ss_fronts") as batch:
        batch.drop_column("seq")


def downgrade() -> None:
    # 0005's readers fold in the rows changed after a front's seq: with no seq to trust, none is kept
    op.execute("DELETE FROM ss_fronts")
    with op.batch_alter_table("ss_fronts") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("ss_fronts") as batch:
        batch.alter_column("seq", server_default=None)
    with op.batch_alter_table("ss_trials") as batch:
        batch.drop_column("map50")
