"""run history: ablation keys, run tags, indexes for paging runs newest first

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

``run_ablations`` and ``run_tags`` are the indexed forms of ``runs.ablations`` and ``runs.tags``
(filters "ablating this node", "tagged X"); the three ``runs`` indexes end in the paging order
``(job_id, index)`` so a filtered history page is an index range scan, not a sort. Rows for runs
that existed before this revision are filled in from their stored columns.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from models.store.run_keys import ablation_keys

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _child_table(name: str, column: sa.Column) -> None:
    op.create_table(
        name,
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        column,
        sa.ForeignKeyConstraint(
            ["job_id", "index"],
            ["runs.job_id", "runs.index"],
            name=op.f(f"fk_{name}_job_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "index", column.name, name=op.f(f"pk_{name}")),
    )
    with op.batch_alter_table(name) as batch_op:
        batch_op.create_index(
            f"ix_{name}_{column.name}_job_id_index", [column.name, "job_id", "index"]
        )


def _backfill() -> None:
    connection = op.get_bind()
    runs = sa.table(
        "runs",
        sa.column("job_id", sa.String),
        sa.column("index", sa.Integer),
        sa.column("ablations", sa.Text),
        sa.column("tags", sa.JSON),
    )
    keys, tags = [], []
    for job_id, index, ablations, run_tags in connection.execute(
        sa.select(runs.c.job_id, runs.c.index, runs.c.ablations, runs.c.tags)
    ):
        if isinstance(run_tags, str):
            run_tags = json.loads(run_tags)
        keys += [{"job_id": job_id, "index": index, "key": k} for k in ablation_keys(ablations)]
        tags += [{"job_id": job_id, "index": index, "tag": t} for t in sorted(set(run_tags or []))]
    if keys:
        op.bulk_insert(sa.table("run_ablations", *(sa.column(c) for c in keys[0])), keys)
    if tags:
        op.bulk_insert(sa.table("run_tags", *(sa.column(c) for c in tags[0])), tags)


def upgrade() -> None:
    _child_table("run_ablations", sa.Column("key", sa.String(length=300), nullable=False))
    _child_table("run_tags", sa.Column("tag", sa.String(length=100), nullable=False))
    with op.batch_alter_table("runs") as batch_op:
        batch_op.create_index("ix_runs_model_job_id_index", ["model", "job_id", "index"])
        batch_op.create_index(
            "ix_runs_prompt_hash_job_id_index", ["prompt_hash", "job_id", "index"]
        )
        batch_op.create_index(
            "ix_runs_has_ablations_job_id_index", ["has_ablations", "job_id", "index"]
        )
    _backfill()


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_index("ix_runs_has_ablations_job_id_index")
        batch_op.drop_index("ix_runs_prompt_hash_job_id_index")
        batch_op.drop_index("ix_runs_model_job_id_index")
    op.drop_table("run_tags")
    op.drop_table("run_ablations")
