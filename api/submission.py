"""Submitting a job and waiting for it: shared by the ``/v1`` routes and the TDB-compatible ones.

Order matters: parse the body, check it against the input limits (``api.limits``) and the
model's shape, insert the job ``queued`` (owned by the caller's key, ``api.auth``), commit, and
only then publish the message. A request that fails any check is answered at once with a 4xx and
leaves nothing behind.

The job table is the outbox: the job is committed with ``published_at`` NULL and marked published
once the broker took its message. If the broker is down the job is still accepted (202, status
``queued``): the reaper of any worker (``worker.reaper``) publishes it as soon as the broker is
back, so an accepted job is never left without a message.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from flask import current_app, has_request_context
from flask import request as http_request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import limits
from api.auth import current_owner
from api.database import get_session, sessions
from api.queue import publish_job
from api.served import served_models
from api.waiters import waiter_slot, waiting_now
from models.checks import validate_request
from models.checks.cost import check_cost, estimate_cost
from models.checks.json_shape import check_json_shape
from models.errors import NotFoundError
from models.store.cache import reuse_result
from models.store.jobs import create_job, get_job
from models.store.lifecycle import ENDPOINTS, JOB_DONE_CHANNEL, JobStatus
from models.store.outcomes import get_outcome
from models.store.record_lookup import require_record
from models.store.recovery import mark_published
from models.store.tables import Job
from models.wire.protocol import parse_request, to_wire
from models.wire.unknown import unknown_field_warnings

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024  # one read of a request body
POLL_CAP_SECONDS = 0.02  # longest pause between two looks at a waited-for job (no Redis)
ANNOUNCED_LOOK_SECONDS = 0.5  # with Redis: look at least this often, announced or not


def check_metadata(label: str | None, tags: list[str], count: bool = True) -> None:
    """The label and tags against ``ACTQ_MAX_LABEL_CHARS``, ``ACTQ_MAX_TAGS``, ...; ``count``:
    the number of tags too (an edit's tags are counted once they are applied)."""
    limits.check_metadata(label, tags, limits.limits(), count)


def request_body() -> bytes | bytearray:
    """The request's body, read into one buffer of its declared length.

    Flask's ``get_data`` (and gunicorn's reader under one large read) gathers the stream in
    chunks and joins them, holding the body twice at its peak; a 30 MB body then costs 60 MB
    before the shape check can refuse it. Reads of at most ``READ_CHUNK_BYTES`` into one buffer
    hold it once."""
    length = http_request.content_length
    if not length:
        return http_request.get_data()
    buffer = bytearray(length)
    view, filled = memoryview(buffer), 0
    while filled < length:
        got = http_request.stream.readinto(view[filled : filled + READ_CHUNK_BYTES])
        if not got:
            break
        filled += got
    view.release()
    if filled < length:
        del buffer[filled:]
    return buffer


def parse_and_validate(endpoint: str, body: bytes | bytearray, model_name: str | None):
    """(served model, request in wire form) for a body, or an ActqError naming the field."""
    if endpoint not in ENDPOINTS:
        raise NotFoundError(f"unknown endpoint {endpoint!r}; expected one of {list(ENDPOINTS)}")
    served = served_models().get(model_name)
    if endpoint == "model_info":
        return served, None
    check_json_shape(body, limits.shape_limits(limits.limits()))
    parsed = parse_request(endpoint, body)
    limits.check_request(parsed, served.tokenizer, limits.limits())
    validate_request(endpoint, parsed, served.meta, served.tokenizer, served.autoencoders)
    settings = limits.limits()
    cost = estimate_cost(endpoint, parsed, served.meta, served.tokenizer)
    check_cost(cost, settings.max_response_bytes, settings.max_job_memory_bytes)
    wire = to_wire(parsed)
    if b"\\u0000" in body:  # JSON's only spelling of a NUL inside a string
        # The whole body, not only the parsed request: an unknown key is kept in the job's
        # warnings, and PostgreSQL's JSON cannot store a NUL there either.
        limits.check_no_nul(json.loads(body))
    return served, wire


def submit(
    endpoint: str,
    body: bytes | bytearray,
    model_name: str | None = None,
    label: str | None = None,
    tags: list[str] | None = None,
) -> Job:
    """Validate, store and enqueue one job; returns the committed job."""
    tags = tags or []
    check_metadata(label, tags)
    served, request = parse_and_validate(endpoint, body, model_name)
    warnings = unknown_field_warnings(body, request) if request is not None else []
    session = get_session()
    require_record(session, endpoint, request)  # normalizeActivationsUsingNeuronRecord
    owner = current_owner()
    if not fresh_requested():
        hit = reuse_result(
            session,
            endpoint=endpoint,
            model=served.meta.name,
            model_revision=served.meta.revision,
            request=request,
            label=label,
            tags=tags,
            owner=owner,
            autoencoders=served.autoencoders.record(),
        )
        if hit is not None:
            hit.warnings = warnings or None
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
        owner=owner,
        autoencoders=served.autoencoders.record(),
    )
    job.warnings = warnings or None
    session.commit()
    publish(session, job)
    return job


def publish(session: Session, job: Job) -> bool:
    """Hand the committed job's message to the broker and mark it published (the outbox).

    On a broker error the job stays queued and unpublished; a worker's reaper publishes it when
    the broker is back. Returns whether the broker took the message now.
    """
    try:
        publish_job(job.id, job.model)
    except Exception as error:
        log.warning("Job %s: broker unavailable (%s); the reaper will publish it", job.id, error)
        return False
    try:
        mark_published(session, job.id)
        session.commit()
    except Exception as error:  # not marked: the reaper sends a duplicate, which is harmless
        session.rollback()
        log.warning("Job %s: published but not marked (%s)", job.id, error)
    return True


def fresh_requested() -> bool:
    """``?fresh=1`` (or ``X-Actq-Fresh: 1``): run again even if an identical job finished."""
    if not has_request_context():
        return False
    raw = http_request.args.get("fresh") or http_request.headers.get("X-Actq-Fresh") or ""
    return raw.lower() in ("1", "true", "yes")


def wait_for(job_id: str, seconds: float, outcome: bool = False) -> Job | None:
    """Look at the job's status until it is final or ``seconds`` pass; returns the job then.

    With a Redis broker the look follows each "job done" announcement of the workers (and every
    half second regardless); otherwise it polls. A look reads one column by primary key; the
    whole row (with its response) is read once, at the end, in the same session. A job announced
    done was stored before the announcement, so then the row is read at once, without the look.
    ``outcome``: a final job is read without its runs (``get_outcome``: what its result needs)."""
    with waiter_slot():
        return _wait(job_id, seconds, get_outcome if outcome else get_job)


def _wait(job_id: str, seconds: float, read_final) -> Job | None:
    deadline = time.monotonic() + max(0.0, seconds)
    announcements, subscribed, delay, announced = None, False, 0.002, False
    try:
        while True:
            with sessions()() as session:
                if announced:
                    job = read_final(session, job_id)
                    if job is None or JobStatus(job.status).is_final:
                        return job
                status = session.scalar(select(Job.status).where(Job.id == job_id))
                left = deadline - time.monotonic()
                if status is not None and JobStatus(status).is_final:
                    return read_final(session, job_id)
                if status is None or left <= 0:
                    return get_job(session, job_id)
            if not subscribed:  # about to wait for the first time: subscribe, if there is Redis
                announcements, subscribed = _job_done_announcements(), True
                if announcements is not None:
                    continue  # look once more: the job may have finished before the subscription
            if announcements is not None:
                wait = min(left, ANNOUNCED_LOOK_SECONDS)
                announced = _await_announcement(announcements, job_id, wait)
            else:
                time.sleep(min(delay, left))
                delay = min(delay * 1.5, POLL_CAP_SECONDS * max(1, waiting_now()))
    finally:
        if announcements is not None:
            announcements.close()


def _job_done_announcements():
    """A subscription to the workers' "job done" channel, or None (no Redis broker, or Redis
    unreachable: then waiting polls)."""
    settings = current_app.config["ACTQ_SETTINGS"]
    if not settings.broker().startswith(("redis://", "rediss://")):
        return None
    try:
        client = current_app.extensions.get("actq.redis")
        if client is None:
            client = redis.Redis.from_url(settings.broker(), socket_connect_timeout=2)
            current_app.extensions["actq.redis"] = client
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(JOB_DONE_CHANNEL)
        return pubsub
    except redis.RedisError as error:
        log.debug("No job-done announcements (%s); polling", error)
        return None


def _await_announcement(pubsub, job_id: str, seconds: float) -> bool:
    """True when ``job_id`` is announced; False after ``seconds``, or on a Redis error."""
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is not None and message.get("data") in (job_id, job_id.encode()):
                return True
    except redis.RedisError:
        time.sleep(max(0.0, min(POLL_CAP_SECONDS, end - time.monotonic())))
    return False


def wait_cap() -> float:
    return current_app.config["ACTQ_SETTINGS"].max_wait_seconds
