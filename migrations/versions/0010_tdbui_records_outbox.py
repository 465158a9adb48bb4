"""record sets join the outbox, and say which autoencoders their latent records came from

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

``record_sets.published_at`` is the outbox mark a job has (``jobs.published_at``): NULL until the
broker took the set's message, so that the reaper publishes a set whose API died before it could,
or that a dead worker's lease sent back to ``queued``. Existing sets count as published.
``record_sets.autoencoders`` is ``{"mlp": NAME, "attention": NAME}`` for sets with latent records
(the names TDB's UI puts in its dataset, ``model_AE``), NULL otherwise.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    with op.batch_alter_table("record_sets") as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("autoencoders", _json(), nullable=True))
    op.execute("UPDATE record_sets SET published_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("record_sets") as batch_op:
        batch_op.drop_column("autoencoders")
        batch_op.drop_column("published_at")
