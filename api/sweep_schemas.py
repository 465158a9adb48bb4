"""A sweep's JSON bodies as pydantic models: what ``POST /v1/sweeps``, its cancel and
``GET /v1/sweeps/ID`` send, built through these classes (``api.sweep_table``) and documented from
them in ``/openapi.json``, so the document and the answers are the same shapes."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.schemas import ApiModel


class SweepProgress(ApiModel):
    done: int = Field(description="points final (finished, failed or canceled)")
    of: int = Field(description="points in the grid")
    finished: int
    failed: int
    canceled: int


class SweepBaseline(ApiModel):
    run: str | None = Field(description="the clean run, JOB/0 (None until the worker made it)")
    loss: float | None = None
    node_value: float | None = Field(None, description="the tracked node's value in the clean run")


class SweepRow(ApiModel):
    """One grid point: the ablated node, token and value, its run and what changed."""

    index: int
    node_type: str
    layer: int
    node_index: int = Field(description="the head, neuron or latent")
    position: int = Field(description="the token ablated")
    value: float | None = Field(description="the value set (None: a mean not yet computed)")
    run: str | None = Field(description="the point's run, JOB/0 (None until the worker made it)")
    status: str | None = Field(description="its job's status")
    loss: float | None = None
    loss_change: float | None = Field(None, description="loss minus the baseline's")
    node_value: float | None = Field(None, description="the tracked node (None: not in top-k)")
    node_change: float | None = None
    compare_url: str | None = Field(description="the point's comparison with the baseline")


class SweepView(ApiModel):
    """A sweep without its table: what a submission and a cancel answer."""

    id: str
    status: str
    model: str
    endpoint: str = Field(description="of its runs: batched_tdb or batched")
    grid: dict[str, Any]
    node: dict[str, Any] | None = Field(description="the tracked node (None: the clean top)")
    group: str
    label: str | None = None
    tags: list[str]
    progress: SweepProgress
    baseline: SweepBaseline
    attempts: int
    error: dict[str, Any] | None = None
    created_at: str | None = None
    finished_at: str | None = None
    url: str
    csv_url: str
    page_url: str
    runs_url: str


class SweepTable(SweepView):
    """A sweep with a row per grid point (``GET /v1/sweeps/ID``)."""

    points: list[SweepRow]
