"""The JSON bodies of the run-history routes, and the bridge from stored runs to comparisons.

``run_view`` / ``run_detail`` describe a run (camelCase, like the rest of the API);
``side_of(run)`` reads the run's job back from the store (request and compressed response) and
cuts out the run's own part for ``api.comparison``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote

from pydantic import Field

from api.comparison import BATCHED, NOT_COMPARED, RunSide, run_side, sub_request
from api.schemas import ApiModel, SkippedRow, utc_json
from api.served import family_of
from models.store.corrupt import DamagedRowError
from models.store.response_stream import read_parts
from models.store.run_keys import ablation_keys
from models.store.tables import Run


class RunView(ApiModel):
    run: str = Field(description="JOB/N: how this run is named in comparisons")
    job_id: str
    index: int
    endpoint: str
    status: str = Field(description="the status of the run's job")
    model: str
    model_revision: str | None = None
    family: str | None = Field(None, description="the model's family, when it is served here")
    prompt: str
    target_tokens: list[str] | None = None
    distractor_tokens: list[str] | None = None
    has_ablations: bool
    ablations: list[Any] = Field(description="canonical form: sorted, values as floats")
    ablation_keys: list[str] = Field(description="what the `ablates` filter matches")
    trace: dict[str, Any] | None = None
    loss: float | None = None
    label: str | None = None
    tags: list[str] = []
    created_at: dt.datetime
    cache_of: str | None = Field(None, description="the job whose result this job reused")
    url: str
    page: str = Field(description="the run's permalink page")
    job_url: str
    result_url: str
    baseline_url: str


class RunDetail(RunView):
    request: dict[str, Any] | None = Field(None, description="this run's part of the request")


class RunList(ApiModel):
    runs: list[RunView]
    skipped: list[SkippedRow] = Field(
        default_factory=list, description="rows of this page left out: their stored data is damaged"
    )
    next_cursor: str | None = None
    next: str | None = Field(None, description="URL of the next page, when there is one")


class BaselineView(ApiModel):
    run: str
    baseline: RunView
    compare_url: str
    compare_page: str


def run_path(run: Run) -> str:
    return f"{run.job_id}/{run.index}"


def compare_query(a: str, b: str) -> str:
    return f"a={quote(a, safe='/')}&b={quote(b, safe='/')}"


def run_view(run: Run, cls: type[RunView] = RunView, **extra: Any) -> RunView:
    job = run.job
    return cls(
        run=run.address,
        job_id=run.job_id,
        index=run.index,
        endpoint=job.endpoint,
        status=job.status,
        model=run.model,
        model_revision=run.model_revision,
        family=family_of(run.model),
        prompt=run.prompt,
        target_tokens=run.target_tokens,
        distractor_tokens=run.distractor_tokens,
        has_ablations=run.has_ablations,
        ablations=json.loads(run.ablations or "[]"),
        ablation_keys=ablation_keys(run.ablations),
        trace=run.trace,
        loss=run.loss,
        label=run.label,
        tags=list(run.tags or []),
        created_at=run.created_at,
        cache_of=job.cache_of,
        url=f"/v1/runs/{run_path(run)}",
        page=f"/runs/{run_path(run)}",
        job_url=f"/v1/jobs/{run.job_id}",
        result_url=f"/v1/jobs/{run.job_id}/result",
        baseline_url=f"/v1/runs/{run_path(run)}/baseline",
        **extra,
    )


def run_detail(run: Run) -> RunDetail:
    request = sub_request(run.job.endpoint, run.job.request, run.index)
    return run_view(run, RunDetail, request=request)


UNREAD_KINDS = frozenset(NOT_COMPARED)  # kept as their kind alone (``api.comparison.part_data``)


def stored_parts(job, indices: set[int]) -> tuple[dict[int, Any], int]:
    """The runs' parts of the job's stored response (``models.store.response_stream``: decoded
    once, only those parts built); ({}, 0) without a response."""
    if job.response is None:
        return {}, 0
    try:
        return read_parts(job.response, indices, job.endpoint in BATCHED, UNREAD_KINDS)
    except ValueError as error:
        raise DamagedRowError(f"job {job.id}: {error}", "id") from error


def side_of(run: Run, part: dict[str, Any] | None = None) -> RunSide:
    """The run as ``api.comparison`` sees it (``part``: its part of the response, if read)."""
    job = run.job
    if part is None:
        part = stored_parts(job, {run.index})[0].get(run.index)
    return run_side(
        run.address,
        job.endpoint,
        run.model,
        run.model_revision,
        job.request,
        None,
        run.index,
        part=part,
        status=job.status,
        label=run.label,
        tags=tuple(run.tags or ()),
        family=family_of(run.model),
        created_at=utc_json(run.created_at),
        autoencoders=run.autoencoders,
    )


def sides_of(a: Run, b: Run) -> tuple[RunSide, RunSide]:
    """Both sides, reading a shared job's response once."""
    if a.job_id == b.job_id:
        parts = stored_parts(a.job, {a.index, b.index})[0]
        return side_of(a, parts.get(a.index) or {}), side_of(b, parts.get(b.index) or {})
    side_a = side_of(a)
    return side_a, side_of(b)
