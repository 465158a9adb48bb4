"""node records: record_sets (records jobs), node_records, node_explanations

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01

A records job (``POST /v1/records``) is a ``record_sets`` row with a job's lifecycle; the records
it builds are ``node_records`` rows (one per neuron or head), read by TDB's read routes.
``node_explanations`` holds what people say a node does (``PUT /v1/nodes/...``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
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
        "record_sets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_revision", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kinds", _json(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("random_k", sa.Integer(), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("corpus_name", sa.String(length=200), nullable=False),
        sa.Column("corpus_sha256", sa.String(length=64), nullable=False),
        sa.Column("corpus", sa.LargeBinary(), nullable=False),
        sa.Column("n_sequences", sa.Integer(), nullable=True),
        sa.Column("done_sequences", sa.Integer(), nullable=False),
        sa.Column("error", _json(), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("heartbeat_at", _time(), nullable=True),
        sa.Column("finished_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_sets")),
    )
    with op.batch_alter_table("record_sets") as batch_op:
        batch_op.create_index("ix_record_sets_name", ["name"])
    op.create_table(
        "node_records",
        sa.Column("record_set_id", sa.String(length=32), nullable=False),
        sa.Column("dst", sa.String(length=64), nullable=False),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("activation_index", sa.Integer(), nullable=False),
        sa.Column("max_activation", sa.Float(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_set_id"],
            ["record_sets.id"],
            name=op.f("fk_node_records_record_set_id_record_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "record_set_id", "dst", "layer_index", "activation_index", name=op.f("pk_node_records")
        ),
    )
    op.create_table(
        "node_explanations",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("dst", sa.String(length=64), nullable=False),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("activation_index", sa.Integer(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("author", sa.String(length=100), nullable=True),
        sa.Column("updated_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint(
            "model", "dst", "layer_index", "activation_index", name=op.f("pk_node_explanations")
        ),
    )


def downgrade() -> None:
    op.drop_table("node_explanations")
    op.drop_table("node_records")
    op.drop_table("record_sets")
