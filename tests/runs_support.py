"""Helpers for the run-history and comparison tests: stored jobs from golden responses."""

from __future__ import annotations

import copy
import json

from models.store.jobs import claim_job, create_job, finish_job
from models.store.runs import run_losses
from models.wire.encoding import dumps
from tests.conftest import GOLDEN_DIR, GOLDEN_MODEL_NAME

PAIR_CASE = GOLDEN_DIR / "cases" / "061-tdb-ui-pair-clean-and-ablated.json"


def golden_pair() -> dict:
    """The golden clean + ablated batched_tdb pair: ``{"request", "response", ...}``."""
    return json.loads(PAIR_CASE.read_text())


def single(request: dict, index: int) -> dict:
    """A batched_tdb request holding only sub-request ``index`` of ``request``."""
    return {"subRequests": [copy.deepcopy(request["subRequests"][index])]}


def store_finished(
    sessions,
    request: dict,
    response: dict,
    *,
    endpoint: str = "batched_tdb",
    model: str = GOLDEN_MODEL_NAME,
    revision: str | None = None,
    label: str | None = None,
    tags: list[str] | None = None,
) -> str:
    """Store a job that finished with ``response``, as the worker would; returns its id."""
    with sessions.begin() as session:
        job = create_job(
            session,
            endpoint=endpoint,
            model=model,
            model_revision=revision,
            request=request,
            label=label,
            tags=tags,
        )
        job_id = job.id
    with sessions.begin() as session:
        attempt = claim_job(session, job_id, "test-worker", 600)
        losses = run_losses(endpoint, response)
        assert finish_job(session, job_id, attempt, dumps(response), losses, 0.01)
    return job_id


def run_queued(sessions, job_id: str, model) -> str:
    """Run a queued job in this process with the real worker logic and engine."""
    from worker.execution import execute_job

    return execute_job(sessions, job_id, model=lambda: model, heartbeat_seconds=60)
