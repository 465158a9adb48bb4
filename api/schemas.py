"""The API's own JSON bodies (jobs, lists, errors) as pydantic models, camelCase on the wire.

The views build their answers through these models and ``/openapi.json`` documents them from the
same classes, so the document cannot drift from what the routes send.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.orm import object_session

from models.store.lifecycle import JobStatus
from models.store.tables import Job, Run


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True
    )

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ErrorDetail(ApiModel):
    type: str
    message: str
    path: str | None = None


class ErrorBody(ApiModel):
    error: ErrorDetail


class JobWarning(ApiModel):
    """Something the submission was told besides an error: a field it ignored, say."""

    type: str
    message: str
    path: str | None = None


class Links(ApiModel):
    self_: str = Field(alias="self")
    result: str


class RunSummary(ApiModel):
    """One run as a job lists it (the full view is api.run_views.RunView)."""

    index: int
    address: str = Field(description="JOB/N: how this run is named in comparisons")
    prompt: str
    target_tokens: list[str] | None = None
    distractor_tokens: list[str] | None = None
    has_ablations: bool
    loss: float | None = None


class JobAccepted(ApiModel):
    id: str
    status: str
    url: str
    result_url: str
    cache_of: str | None = Field(None, description="the job whose stored result answers this one")
    warnings: list[JobWarning] = Field(
        default_factory=list, description="fields of the body that were ignored (misspelled?)"
    )


class JobView(ApiModel):
    id: str
    status: str
    endpoint: str
    model: str
    model_revision: str | None = None
    autoencoders: dict[str, Any] | None = Field(
        None, description="the AEs that served it: {mlp, attention: {name, contentHash} | null}"
    )
    label: str | None = None
    tags: list[str] = []
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    cancel_requested_at: dt.datetime | None = Field(
        None, description="set by POST /v1/jobs/{id}/cancel; a started job stops at its next stage"
    )
    queued_seconds: float | None = Field(None, description="from creation to the last start")
    run_seconds: float | None = Field(None, description="from the last start to the end")
    engine_seconds: float | None = None
    attempts: int
    queue_position: int | None = Field(
        None,
        description="while queued: how many queued jobs of its model run before it in the fair "
        "order between owners (0: next); null once started",
    )
    worker: str | None = None
    error: ErrorDetail | None = None
    cache_hit: bool = Field(
        False, description="answered from the store: an identical request had finished (cacheOf)"
    )
    cache_of: str | None = None
    warnings: list[JobWarning] = Field(
        default_factory=list, description="fields of the body that were ignored (misspelled?)"
    )
    runs: list[RunSummary] = []
    url: str
    result_url: str
    links: Links


class SkippedRow(ApiModel):
    id: str = Field(description="the job id, or JOB/N for a run")
    reason: str = Field(description="what in its stored row no longer reads")


class JobList(ApiModel):
    jobs: list[JobView]
    skipped: list[SkippedRow] = Field(
        default_factory=list, description="rows of this page left out: their stored data is damaged"
    )
    next_cursor: str | None = None
    next: str | None = Field(None, description="URL of the next page, when there is one")


class AutoencoderView(ApiModel):
    name: str
    slot: str = Field(description="mlp or attention")
    input: str = Field(description="the location it reads: mlp_post_act, resid_delta_mlp, ...")
    layers: list[int]
    n_latents: int = Field(description="latents per layer (after TDB's dead-latent omission)")
    file_format: str
    content_hash: str


class ModelView(ApiModel):
    name: str
    revision: str | None = None
    source: str | None = None  # where the weights are: shown to admins only
    queue: str
    default: bool
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    n_ctx: int
    vocab_size: int
    autoencoders: list[AutoencoderView] = Field(
        default_factory=list, description="the sparse autoencoders served with this model"
    )
    family: str = Field("gpt2", description="config.json's model_type: gpt2, gpt_neox, llama, ...")
    n_kv_heads: int | None = None


class ModelList(ApiModel):
    models: list[ModelView]
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="configured models that cannot be served, and why"
    )


class Health(ApiModel):
    status: str
    database: str


def utc_json(value: dt.datetime | None) -> str | None:
    """A time as the JSON bodies write it (as pydantic does): ``2026-12-01T10:00:00.123456Z``."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 6)


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def run_summary(run: Run) -> RunSummary:
    return RunSummary(
        index=run.index,
        address=run.address,
        prompt=run.prompt,
        target_tokens=run.target_tokens,
        distractor_tokens=run.distractor_tokens,
        has_ablations=run.has_ablations,
        loss=run.loss,
    )


def job_view(job: Job) -> JobView:
    url = job_url(job.id)
    error = None
    if job.error:
        error = ErrorDetail(
            type=job.error.get("type", "error"),
            message=job.error.get("message", ""),
            path=job.error.get("path"),
        )
    return JobView(
        id=job.id,
        status=job.status,
        endpoint=job.endpoint,
        model=job.model,
        model_revision=job.model_revision,
        autoencoders=job.autoencoders,
        label=job.label,
        tags=list(job.tags or []),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cancel_requested_at=job.cancel_requested_at,
        queued_seconds=_seconds(job.created_at, job.started_at),
        run_seconds=_seconds(job.started_at, job.finished_at),
        engine_seconds=job.engine_seconds,
        attempts=job.attempts,
        queue_position=queue_position(job),
        worker=admin_only(job.worker),
        error=error,
        cache_hit=job.cache_of is not None,
        cache_of=job.cache_of,
        warnings=[JobWarning(**w) for w in job.warnings or []],
        runs=[run_summary(run) for run in job.runs],
        url=url,
        result_url=f"{url}/result",
        links=Links(self_=url, result=f"{url}/result"),
    )


def queue_position(job: Job) -> int | None:
    """The job's place in its model's fair order (``models.store.fairness``), None unless queued.

    One request works the order out once per model (``flask.g``), however many jobs it shows."""
    if job.status != JobStatus.QUEUED.value:
        return None
    from flask import current_app, g

    from api.database import get_session
    from models.store.fairness import queue_positions

    cache = g.setdefault("actq_queue_positions", {})
    if job.model not in cache:
        settings = current_app.config["ACTQ_SETTINGS"]
        session = object_session(job) or get_session()
        cache[job.model] = queue_positions(session, job.model, settings.max_attempts)
    return cache[job.model].get(job.id)


def admin_only(value: Any) -> Any:
    """``value`` for an admin (or an open service), None for other keys: worker host names and
    pids, model paths and the hub cache's location tell other users about the machine."""
    from api.auth import current_caller

    caller = current_caller()
    return value if caller is None or caller.admin else None


def accepted(job: Job) -> JobAccepted:
    url = job_url(job.id)
    return JobAccepted(
        id=job.id,
        status=job.status,
        url=url,
        result_url=f"{url}/result",
        cache_of=job.cache_of,
        warnings=[JobWarning(**w) for w in job.warnings or []],
    )
