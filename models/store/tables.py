"""The tables: one ``jobs`` row per submission, one ``runs`` row per sub-request, job tags, API keys.

A job holds the request as submitted (normalised wire JSON), the response as the exact TDB wire
text compressed with zlib (so the result endpoint returns byte-identical JSON without re-encoding),
or a structured error. A run (``JOB/N``) is one sub-request of a job: the unit a person compares,
so its prompt, tokens, ablations and loss are columns, indexed for history queries. Tags live in
their own table so that "jobs with tag X" is an indexed join on PostgreSQL and SQLite alike; the
``tags`` JSON columns are the same lists, denormalised for display.

JSON columns are JSONB on PostgreSQL and JSON on SQLite. Alembic (``migrations/``) owns the schema;
a test checks that autogenerate finds no difference between these classes and the migrations.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from models.store.column_types import (  # noqa: F401  (CorruptValue, utcnow: read from here too)
    CorruptValue,
    JSONType,
    UTCDateTime,
    utcnow,
)
from models.store.lifecycle import JobStatus
from models.store.run_keys import ablation_keys

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        dt.datetime: UTCDateTime(),
    }


STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="status"),
        Index("ix_jobs_model_created_at", "model", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        # The reaper's two sweeps: stale heartbeats of started jobs, unpublished queued jobs.
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_status_published_at", "status", "published_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    model_revision: Mapped[str | None] = mapped_column(String(100))
    # the AEs that serve it: {"mlp": {"name", "contentHash"} | None, "attention": ...}; None: none
    autoencoders: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    request: Mapped[dict[str, Any] | None]
    request_hash: Mapped[str] = mapped_column(String(64), index=True)
    response: Mapped[bytes | None] = mapped_column(LargeBinary)  # zlib of the wire JSON text
    response_size: Mapped[int | None] = mapped_column(Integer)  # bytes of the uncompressed text
    error: Mapped[dict[str, Any] | None]
    warnings: Mapped[list[Any] | None]  # unknown fields the submission ignored, and why
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    published_at: Mapped[dt.datetime | None]  # the outbox: None until the broker took a message
    cancel_requested_at: Mapped[dt.datetime | None]  # a started job stops at its next stage
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(100))
    label: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    cache_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    engine_seconds: Mapped[float | None] = mapped_column(Float)

    runs: Mapped[list[Run]] = relationship(
        back_populates="job", order_by="Run.index", cascade="all, delete-orphan", lazy="selectin"
    )
    tag_rows: Mapped[list[JobTag]] = relationship(cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.endpoint!r}, {self.model!r}, {self.status!r})"


class Run(Base):
    """One sub-request of a job, addressable as ``<job id>/<index>``."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_model_created_at", "model", "created_at"),
        Index("ix_runs_prompt_hash_model", "prompt_hash", "model"),
        Index("ix_runs_has_ablations_created_at", "has_ablations", "created_at"),
        # Run history pages newest first by (job_id, index): one index per common filter.
        Index("ix_runs_model_job_id_index", "model", "job_id", "index"),
        Index("ix_runs_prompt_hash_job_id_index", "prompt_hash", "job_id", "index"),
        Index("ix_runs_has_ablations_job_id_index", "has_ablations", "job_id", "index"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    model_revision: Mapped[str | None] = mapped_column(String(100))
    autoencoders: Mapped[dict[str, Any] | None]
    target_tokens: Mapped[list[Any] | None]
    distractor_tokens: Mapped[list[Any] | None]
    ablations: Mapped[str] = mapped_column(Text, default="[]")  # canonical sorted JSON
    has_ablations: Mapped[bool] = mapped_column(Boolean, default=False)
    trace: Mapped[dict[str, Any] | None]
    loss: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)

    job: Mapped[Job] = relationship(back_populates="runs")
    ablation_rows: Mapped[list[RunAblation]] = relationship(cascade="all, delete-orphan")
    tag_rows: Mapped[list[RunTag]] = relationship(cascade="all, delete-orphan")

    @property
    def address(self) -> str:
        return f"{self.job_id}/{self.index}"

    # Setting ``ablations`` or ``tags`` keeps their indexed rows in step (SQLAlchemy validators).
    @validates("ablations")
    def _index_ablations(self, _key: str, value: str) -> str:
        keep = {row.key: row for row in self.ablation_rows}
        self.ablation_rows = [keep.get(k) or RunAblation(key=k) for k in ablation_keys(value)]
        return value

    @validates("tags")
    def _index_tags(self, _key: str, value: list[Any]) -> list[Any]:
        keep = {row.tag: row for row in self.tag_rows}
        self.tag_rows = [keep.get(t) or RunTag(tag=t) for t in sorted(set(value or []))]
        return value


class RunAblation(Base):
    """One ablated node of one run, as a ``models.store.run_keys`` key: the indexed form of ablations."""

    __tablename__ = "run_ablations"
    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "index"], ["runs.job_id", "runs.index"], ondelete="CASCADE"
        ),
        Index("ix_run_ablations_key_job_id_index", "key", "job_id", "index"),
    )

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)


class RunTag(Base):
    """One tag of one run: the indexed form of ``Run.tags`` (editable apart from the job's)."""

    __tablename__ = "run_tags"
    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "index"], ["runs.job_id", "runs.index"], ondelete="CASCADE"
        ),
        Index("ix_run_tags_tag_job_id_index", "tag", "job_id", "index"),
    )

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)


class ApiKey(Base):
    """An API key: only the sha256 of the token is stored (``models.store.keys``). The key's ``name``
    is the owner of the jobs it submits; an admin key sees every owner's jobs."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_name", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rate_per_minute: Mapped[float | None] = mapped_column(Float)  # None: the service default
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class JobTag(Base):
    """One tag of one job: the indexed form of ``Job.tags`` for filtering."""

    __tablename__ = "job_tags"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True, index=True)


class RecordSet(Base):
    """A records job and the node records it built (``models.store.node_records``): what a node
        does over a corpus, read by TDB's ``/neuron_record`` and ``/attention_head_record``.

        Its lifecycle is a job's (queued, started with attempts, worker and heartbeat, then finished
        or failed), and so is its recovery: the outbox (``published_at``) and the reaper
    (``models.store.record_recovery``); ``done_sequences`` of ``n_sequences`` is its progress. The corpus is kept
        (compressed) so that a redelivered job can run again."""

    __tablename__ = "record_sets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(String(200))
    model_revision: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    kinds: Mapped[list[Any]] = mapped_column(default=list)
    top_k: Mapped[int] = mapped_column(Integer)
    random_k: Mapped[int] = mapped_column(Integer)
    seq_len: Mapped[int] = mapped_column(Integer)
    corpus_name: Mapped[str] = mapped_column(String(200))
    corpus_sha256: Mapped[str] = mapped_column(String(64))
    corpus: Mapped[bytes] = mapped_column(LargeBinary)  # zlib of the corpus text
    n_sequences: Mapped[int | None] = mapped_column(Integer)
    done_sequences: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None]
    owner: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    published_at: Mapped[dt.datetime | None]  # the outbox, as ``Job.published_at``
    autoencoders: Mapped[dict[str, Any] | None]  # slot -> AE name, for latent records


class NodeRecord(Base):
    """One node's record in a record set: its largest activation and, compressed, its top and
    random sequences (token ids and activations; token pairs flattened for attention heads)."""

    __tablename__ = "node_records"

    record_set_id: Mapped[str] = mapped_column(
        ForeignKey("record_sets.id", ondelete="CASCADE"), primary_key=True
    )
    dst: Mapped[str] = mapped_column(String(64), primary_key=True)
    layer_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    activation_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_activation: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class NodeExplanation(Base):
    """A person's explanation of a node of a model (``PUT /v1/nodes/...``), one per node."""

    __tablename__ = "node_explanations"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    dst: Mapped[str] = mapped_column(String(64), primary_key=True)
    layer_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    activation_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    explanation: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    author: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    """A sweep (``models.store.sweeps``): one base request run under a grid of ablations.

    Its lifecycle is a job's (queued, started with attempts and heartbeat, then finished, failed
    or canceled), and so is its recovery: the outbox (``published_at``) and the reaper
    (``models.store.side_recovery``). Its baseline and each point are ordinary jobs (made by the
    worker, tagged ``sweep:ID``), so they are runs of the history like any other."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    model_revision: Mapped[str | None] = mapped_column(String(100))
    autoencoders: Mapped[dict[str, Any] | None]
    endpoint: Mapped[str] = mapped_column(String(64))  # of its runs: batched_tdb or batched
    base_request: Mapped[dict[str, Any]]
    grid: Mapped[dict[str, Any]]
    node: Mapped[dict[str, Any] | None]  # the node whose change is shown (None: the clean top)
    node_group: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    n_points: Mapped[int] = mapped_column(Integer)
    point_memory_bytes: Mapped[int] = mapped_column(Integer, default=0)
    baseline_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    baseline_loss: Mapped[float | None] = mapped_column(Float)
    baseline_node_value: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    owner: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    cancel_requested_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    published_at: Mapped[dt.datetime | None]  # the outbox, as ``Job.published_at``


class SweepPoint(Base):
    """One grid point of a sweep: the ablated node, token and value, its run, and its outcome."""

    __tablename__ = "sweep_points"

    sweep_id: Mapped[str] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_type: Mapped[str] = mapped_column(String(64))
    layer: Mapped[int] = mapped_column(Integer)
    node_index: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)  # None until a "mean" is computed
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    loss: Mapped[float | None] = mapped_column(Float)
    node_value: Mapped[float | None] = mapped_column(Float)
