"""job warnings: what a submission was told besides its errors (unknown fields it ignored)

Revision ID: 0009
Revises: 0003
Create Date: 2026-12-01

``jobs.warnings`` is a JSON list of ``{"type", "path", "message"}``, or NULL when there were none
(every job before this revision).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("warnings", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("warnings")
