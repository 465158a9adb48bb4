"""reliability and API keys: the outbox, cancellation requests, the reaper's indexes, api_keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

``jobs.published_at`` is the outbox: a queued job whose message the broker has not taken yet has
it NULL, and the reaper publishes it. Jobs that exist before this revision are marked published
(their messages were sent when they were submitted). ``jobs.cancel_requested_at`` asks a started
job to stop at its next stage. ``api_keys`` holds sha256 hashes of the keys, never the keys.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("published_at", _time(), nullable=True))
        batch_op.add_column(sa.Column("cancel_requested_at", _time(), nullable=True))
        batch_op.create_index("ix_jobs_status_heartbeat_at", ["status", "heartbeat_at"])
        batch_op.create_index("ix_jobs_status_published_at", ["status", "published_at"])
    jobs = sa.table("jobs", sa.column("published_at", _time()), sa.column("created_at", _time()))
    op.execute(jobs.update().values(published_at=jobs.c.created_at))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("rate_per_minute", sa.Float(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_keys_token_hash")),
    )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.create_index("ix_api_keys_name", ["name"])


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_status_published_at")
        batch_op.drop_index("ix_jobs_status_heartbeat_at")
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("published_at")
