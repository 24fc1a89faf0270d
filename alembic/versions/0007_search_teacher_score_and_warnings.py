"""``ss_searches.teacher_score`` and ``ss_searches.warnings``: what the API says about a search's teacher.

A search's first trial job measures its teacher on the validation data; the worker now keeps that
score on the search, with the warnings the search raised (a teacher scoring about chance), so the
API shows them -- before, a user of the API never saw the warning a CLI user gets. Existing
searches' scores are filled from their study's ``teacher_score`` user attribute in Optuna's tables
(on PostgreSQL, where the service runs); their warnings start empty.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_FILL_TEACHER_SCORE = """
UPDATE ss_searches s SET teacher_score = CAST(a.value_json AS DOUBLE PRECISION)
FROM studies st JOIN study_user_attributes a ON a.study_id = st.study_id
WHERE st.study_name = s.name AND a.key = 'teacher_score' AND a.value_json <> 'null'
"""


def upgrade() -> None:
    doc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("ss_searches") as batch:
        batch.add_column(sa.Column("teacher_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("warnings", doc, nullable=False, server_default=sa.text("'[]'")))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and sa.inspect(bind).has_table("study_user_attributes"):
        op.execute(_FILL_TEACHER_SCORE)


def downgrade() -> None:
    with op.batch_alter_table("ss_searches") as batch:
        batch.drop_column("warnings")
        batch.drop_column("teacher_score")
