"""Submitting a job and waiting for it: shared by the ``/v1`` routes and the TDB-compatible ones.

Order matters: parse the body, check it against the model's shape, insert the job ``queued``,
commit, and only then publish the message. A request that fails any check is answered at once with
a 4xx and leaves nothing behind. If the broker refuses the message, the job row is removed again
and the client gets a 503 with ``Retry-After``: an accepted job always has a message.
"""

from __future__ import annotations

import logging
import time

from flask import current_app, has_request_context
from flask import request as http_request
from sqlalchemy.orm import Session

from api.database import get_session, sessions
from api.queue import publish_job
from api.served import served_models
from models.errors import ActqError, NotFoundError, RequestValidationError
from models.jobs import ENDPOINTS, JobStatus
from models.protocol import parse_request, to_wire
from models.records import Job
from models.result_cache import reuse_result
from models.store import create_job, get_job
from models.validation import validate_request

log = logging.getLogger(__name__)

MAX_TAGS = 20
POLL_CAP_SECONDS = 0.05  # longest pause between two looks at a waited-for job
MAX_TAG_CHARS = 100
MAX_LABEL_CHARS = 200


class ServiceUnavailable(ActqError):
    status = 503
    type = "service_unavailable"


def check_metadata(label: str | None, tags: list[str]) -> None:
    if label is not None and len(label) > MAX_LABEL_CHARS:
        raise RequestValidationError(f"label longer than {MAX_LABEL_CHARS} characters", "label")
    if len(tags) > MAX_TAGS:
        raise RequestValidationError(f"more than {MAX_TAGS} tags", "tag")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_CHARS:
            raise RequestValidationError(f"a tag must have 1 to {MAX_TAG_CHARS} characters", "tag")


def parse_and_validate(endpoint: str, body: bytes, model_name: str | None):
    """(served model, request in wire form) for a body, or an ActqError naming the field."""
    if endpoint not in ENDPOINTS:
        raise NotFoundError(f"unknown endpoint {endpoint!r}; expected one of {list(ENDPOINTS)}")
    served = served_models().get(model_name)
    if endpoint == "model_info":
        return served, None
    parsed = parse_request(endpoint, body)
    validate_request(endpoint, parsed, served.meta, served.tokenizer)
    return served, to_wire(parsed)


def submit(
    endpoint: str,
    body: bytes,
    model_name: str | None = None,
    label: str | None = None,
    tags: list[str] | None = None,
) -> Job:
    """Validate, store and enqueue one job; returns the committed job."""
    tags = tags or []
    check_metadata(label, tags)
    served, request = parse_and_validate(endpoint, body, model_name)
    session = get_session()
    if not fresh_requested():
        hit = reuse_result(
            session,
            endpoint=endpoint,
            model=served.meta.name,
            model_revision=served.meta.revision,
            request=request,
            label=label,
            tags=tags,
        )
        if hit is not None:
            session.commit()
            log.info("Job %s: answered from the result of job %s", hit.id, hit.cache_of)
            return hit
    job = create_job(
        session,
        endpoint=endpoint,
        model=served.meta.name,
        model_revision=served.meta.revision,
        request=request,
        label=label,
        tags=tags,
    )
    session.commit()
    try:
        publish_job(job.id, job.model)
    except Exception as error:  # the broker is down: take the job back
        log.error("Job %s: could not publish (%s); removing it", job.id, error)
        _remove(session, job)
        raise ServiceUnavailable("the job queue is unavailable; try again shortly") from error
    return job


def fresh_requested() -> bool:
    """``?fresh=1`` (or ``X-Actq-Fresh: 1``): run again even if an identical job finished."""
    if not has_request_context():
        return False
    raw = http_request.args.get("fresh") or http_request.headers.get("X-Actq-Fresh") or ""
    return raw.lower() in ("1", "true", "yes")


def _remove(session: Session, job: Job) -> None:
    session.delete(job)
    session.commit()


def wait_for(job_id: str, seconds: float) -> Job | None:
    """Poll the store until the job is final or ``seconds`` pass; returns its last state."""
    deadline = time.monotonic() + max(0.0, seconds)
    delay = 0.005
    while True:
        with sessions()() as session:
            job = get_job(session, job_id)
        if job is None or JobStatus(job.status).is_final or time.monotonic() >= deadline:
            return job
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, POLL_CAP_SECONDS)


def wait_cap() -> float:
    return current_app.config["ACTQ_SETTINGS"].max_wait_seconds
