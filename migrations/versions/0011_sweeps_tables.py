"""sweeps: sweeps (one base request under a grid of ablations) and sweep_points

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

A sweep (``POST /v1/sweeps``) is a ``sweeps`` row with a job's lifecycle; each grid point is a
``sweep_points`` row naming the ablated node, token and value, and the job that ran it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_revision", sa.String(length=100), nullable=True),
        sa.Column("autoencoders", _json(), nullable=True),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("base_request", _json(), nullable=False),
        sa.Column("grid", _json(), nullable=False),
        sa.Column("node", _json(), nullable=True),
        sa.Column("node_group", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("point_memory_bytes", sa.Integer(), nullable=False),
        sa.Column("baseline_job_id", sa.String(length=32), nullable=True),
        sa.Column("baseline_loss", sa.Float(), nullable=True),
        sa.Column("baseline_node_value", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("heartbeat_at", _time(), nullable=True),
        sa.Column("cancel_requested_at", _time(), nullable=True),
        sa.Column("finished_at", _time(), nullable=True),
        sa.ForeignKeyConstraint(
            ["baseline_job_id"],
            ["jobs.id"],
            name=op.f("fk_sweeps_baseline_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_table(
        "sweep_points",
        sa.Column("sweep_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("node_type", sa.String(length=64), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("node_index", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("node_value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_sweep_points_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name=op.f("fk_sweep_points_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sweep_id", "index", name=op.f("pk_sweep_points")),
    )
    with op.batch_alter_table("sweep_points") as batch_op:
        batch_op.create_index("ix_sweep_points_job_id", ["job_id"])


def downgrade() -> None:
    op.drop_table("sweep_points")
    op.drop_table("sweeps")
