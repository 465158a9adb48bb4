"""jobs, runs and job tags

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Types are spelled out here rather than imported from models.store.tables, so this revision keeps
meaning the same schema when the models change later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def _time() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_revision", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("response_size", sa.Integer(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("finished_at", _time(), nullable=True),
        sa.Column("heartbeat_at", _time(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("cache_of", sa.String(length=32), nullable=True),
        sa.Column("engine_seconds", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'started', 'finished', 'failed', 'canceled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["cache_of"], ["jobs.id"], name=op.f("fk_jobs_cache_of_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"])
        batch_op.create_index("ix_jobs_model_created_at", ["model", "created_at"])
        batch_op.create_index("ix_jobs_owner_created_at", ["owner", "created_at"])
        batch_op.create_index(batch_op.f("ix_jobs_request_hash"), ["request_hash"])
        batch_op.create_index("ix_jobs_status_created_at", ["status", "created_at"])

    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("tag", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_tags_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "tag", name=op.f("pk_job_tags")),
    )
    with op.batch_alter_table("job_tags") as batch_op:
        batch_op.create_index(batch_op.f("ix_job_tags_tag"), ["tag"])

    op.create_table(
        "runs",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_revision", sa.String(length=100), nullable=True),
        sa.Column("target_tokens", _json(), nullable=True),
        sa.Column("distractor_tokens", _json(), nullable=True),
        sa.Column("ablations", sa.Text(), nullable=False),
        sa.Column("has_ablations", sa.Boolean(), nullable=False),
        sa.Column("trace", _json(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_runs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "index", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs") as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_created_at"), ["created_at"])
        batch_op.create_index("ix_runs_has_ablations_created_at", ["has_ablations", "created_at"])
        batch_op.create_index("ix_runs_model_created_at", ["model", "created_at"])
        batch_op.create_index("ix_runs_prompt_hash_model", ["prompt_hash", "model"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("job_tags")
    op.drop_table("jobs")
