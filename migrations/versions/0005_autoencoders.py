"""autoencoders: the sparse autoencoders that served a job and its runs

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01

``jobs.autoencoders`` and ``runs.autoencoders`` hold the name and content hash of the MLP and
attention AE the worker served with the model (``{"mlp": {"name", "contentHash"} | null,
"attention": ...}``), or NULL when it served none. They are part of the result-cache key and of a
comparison's settings ("differs: autoencoders").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    for table in ("jobs", "runs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("autoencoders", _json(), nullable=True))


def downgrade() -> None:
    for table in ("runs", "jobs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("autoencoders")
