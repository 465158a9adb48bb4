"""sweeps join the outbox

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

``sweeps.published_at`` is the outbox mark a job has (``jobs.published_at``): NULL until the
broker took the sweep's message, so that the reaper publishes a sweep whose API died before it
could, or that a dead worker's lease sent back to ``queued``. Existing sweeps count as published.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE sweeps SET published_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.drop_column("published_at")
