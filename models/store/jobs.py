"""Data functions for jobs: create, claim, heartbeat, finish, fail, find and list.

Each function takes a ``session`` and leaves the transaction to its caller (the view or the task
owns it), so a status change and the data it implies are committed together. The claim and the
final writes are conditional ``UPDATE``s, which makes a message delivered twice harmless: only one
worker can hold an attempt, and only the holder of the current attempt can store its outcome.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, and_, case, cast, exists, or_, select, update
from sqlalchemy.orm import Session

from models.store import compression
from models.store.lifecycle import JobStatus
from models.store.runs import canonical_json, describe_runs, prompt_hash
from models.store.tables import Job, JobTag, Run, RunAblation, utcnow

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last_id = [0, 0]  # (milliseconds, random part) of the last id made by this process
_id_lock = threading.Lock()


def new_job_id() -> str:
    """A 26-character, URL-safe, time-sortable id (48-bit milliseconds + 80 random bits).

    Within one process ids strictly increase, even within a millisecond (the random part of a
    later id is the previous one plus one, as in monotonic ULIDs).
    """
    with _id_lock:
        millis = int(time.time() * 1000)
        if millis <= _last_id[0]:
            millis, rand = _last_id[0], _last_id[1] + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to count up
        _last_id[:] = [millis, rand]
    value = (millis << 80) | rand
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def request_hash(
    endpoint: str,
    request: Any,
    model: str,
    revision: str | None,
    autoencoders: dict[str, Any] | None = None,
) -> str:
    """sha256 of the canonical request with its endpoint, model, model revision and AEs (names
    and content hashes; left out when none are served, so older keys stay valid)."""
    key = [endpoint, model, revision, request]
    if autoencoders is not None:
        key.append(autoencoders)
    text = canonical_json(key)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def response_bytes(job: Job) -> bytes | None:
    """The stored TDB response exactly as the engine's encoder wrote it."""
    if job.response is None:
        return None
    try:
        return zlib.decompress(job.response)
    except zlib.error as error:
        from models.store.corrupt import DamagedRowError

        raise DamagedRowError(
            f"job {job.id}: its stored response does not inflate ({error})", "id"
        ) from error


def create_job(
    session: Session,
    *,
    endpoint: str,
    model: str,
    model_revision: str | None,
    request: dict[str, Any] | None,
    label: str | None = None,
    tags: list[str] | None = None,
    owner: str | None = None,
    autoencoders: dict[str, Any] | None = None,
) -> Job:
    """Add a ``queued`` job with its runs and tags (not yet committed)."""
    tags = sorted(set(tags or []))
    now = utcnow()
    job = Job(
        id=new_job_id(),
        endpoint=endpoint,
        model=model,
        model_revision=model_revision,
        autoencoders=autoencoders,
        status=JobStatus.QUEUED.value,
        request=request,
        request_hash=request_hash(endpoint, request, model, model_revision, autoencoders),
        created_at=now,
        attempts=0,
        owner=owner,
        label=label,
        tags=tags,
    )
    for index, info in enumerate(describe_runs(endpoint, request)):
        job.runs.append(
            Run(
                index=index,
                prompt=info.prompt,
                prompt_hash=info.prompt_hash,
                model=model,
                model_revision=model_revision,
                autoencoders=autoencoders,
                target_tokens=info.target_tokens,
                distractor_tokens=info.distractor_tokens,
                ablations=info.ablations,
                has_ablations=info.has_ablations,
                trace=info.trace,
                label=label,
                tags=tags,
                created_at=now,
            )
        )
    job.tag_rows = [JobTag(tag=tag) for tag in tags]
    session.add(job)
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def claim_job(
    session: Session,
    job_id: str,
    worker: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
    max_attempts: int | None = None,
) -> int | None:
    """Move the job to ``started`` for ``worker``; return the attempt number, or None (see
    ``claim_job_returning``)."""
    row = claim_job_returning(session, job_id, worker, lease_seconds, now, max_attempts)
    return None if row is None else row.attempts


def claim_job_returning(
    session: Session,
    job_id: str,
    worker: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
    max_attempts: int | None = None,
    returning: tuple = (),
):
    """Move the job to ``started`` for ``worker``; return the row of the new ``attempts`` and the
    ``returning`` columns (what a worker needs to run it, in the claim's own round trip), or None.

    A ``queued`` job can be claimed; so can a ``started`` one whose heartbeat is older than the
    lease (its worker died and the broker delivered the message again), unless it was asked to
    cancel. Anything else, including a job that already finished, is left alone: the message was
    a duplicate. A job that has had ``max_attempts`` claims is not claimed again (the reaper
    fails it, ``models.store.recovery``).
    """
    now = now or utcnow()
    stale = now - dt.timedelta(seconds=lease_seconds)
    claimable = or_(
        Job.status == JobStatus.QUEUED.value,
        and_(
            Job.status == JobStatus.STARTED.value,
            Job.cancel_requested_at.is_(None),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
        ),
    )
    if max_attempts is not None:
        claimable = and_(claimable, Job.attempts < max_attempts)
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable)
        .values(
            status=JobStatus.STARTED.value,
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
        )
        .returning(Job.attempts, *returning)
        .execution_options(synchronize_session=False)
    )
    return claimed.one_or_none()  # one round trip: the new attempt (and ``returning``), or None


def _held(job_id: str, attempt: int):
    return (Job.id == job_id, Job.status == JobStatus.STARTED.value, Job.attempts == attempt)


def beat(session: Session, job_id: str, attempt: int, now: dt.datetime | None = None) -> bool:
    """Refresh the heartbeat of a job this worker still holds."""
    result = session.execute(
        update(Job)
        .where(*_held(job_id, attempt))
        .values(heartbeat_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def finish_job(
    session: Session,
    job_id: str,
    attempt: int,
    response_text: str,
    losses: list[float | None],
    engine_seconds: float | None,
    unless_canceled: bool = False,
) -> bool:
    """Store the response and mark the job ``finished``; False if the attempt was superseded
    (or, ``unless_canceled``, if a cancel was asked for: ``recovery.store_unless_canceled``)."""
    encoded = response_text.encode("utf-8")
    compressed = compression.compress(encoded)  # zlib, on several threads when large
    now = utcnow()
    held = _held(job_id, attempt)
    if unless_canceled:
        held = (*held, Job.cancel_requested_at.is_(None))
    result = session.execute(
        update(Job)
        .where(*held)
        .values(
            status=JobStatus.FINISHED.value,
            response=compressed,
            response_size=len(encoded),
            finished_at=now,
            heartbeat_at=now,
            engine_seconds=engine_seconds,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    if losses:  # every run's loss in one statement
        session.execute(
            update(Run)
            .where(Run.job_id == job_id, Run.index < len(losses))
            .values(loss=cast(case(dict(enumerate(losses)), value=Run.index), Float))
            .execution_options(synchronize_session=False)
        )
    return True


def fail_job(
    session: Session,
    job_id: str,
    attempt: int | None,
    error: dict[str, Any],
    unless_canceled: bool = False,
) -> bool:
    """Store a structured error and mark the job ``failed``.

    With ``attempt`` None the job is failed whatever its pending state (used before any claim);
    ``unless_canceled`` as for ``finish_job``.
    """
    conditions = (
        _held(job_id, attempt)
        if attempt is not None
        else (
            Job.id == job_id,
            Job.status.in_([s.value for s in (JobStatus.QUEUED, JobStatus.STARTED)]),
        )
    )
    if unless_canceled:
        conditions = (*conditions, Job.cancel_requested_at.is_(None))
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(*conditions)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def pending_jobs(session: Session) -> list[Job]:
    """Jobs not yet final, oldest first (for recovery after a restart)."""
    statuses = [JobStatus.QUEUED.value, JobStatus.STARTED.value]
    return list(session.scalars(select(Job).where(Job.status.in_(statuses)).order_by(Job.id)))


def requeue_job(session: Session, job_id: str) -> bool:
    """Put a ``started`` job back to ``queued`` (its worker is known to be gone)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.STARTED.value)
        .values(status=JobStatus.QUEUED.value, worker=None, heartbeat_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


@dataclass
class JobFilter:
    """History filters; every field is optional and they combine with AND."""

    model: str | None = None
    status: str | None = None
    endpoint: str | None = None
    prompt: str | None = None  # exact prompt of any run
    prompt_contains: str | None = None  # substring of any run's prompt, case-insensitive
    tags: list[str] = field(default_factory=list)  # jobs carrying every one of these tags
    label: str | None = None
    has_ablations: bool | None = None  # any run ablated (True) / no run ablated (False)
    ablates: list[str] = field(default_factory=list)  # a run ablating every one of these nodes
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    owner: str | None = None


def _filter_conditions(f: JobFilter) -> list:
    cond: list = []
    for column, value in (
        (Job.model, f.model),
        (Job.status, f.status),
        (Job.endpoint, f.endpoint),
        (Job.label, f.label),
        (Job.owner, f.owner),
    ):
        if value is not None:
            cond.append(column == value)
    if f.prompt is not None:
        cond.append(exists().where(Run.job_id == Job.id, Run.prompt_hash == prompt_hash(f.prompt)))
    if f.prompt_contains:
        pattern = (
            "%"
            + f.prompt_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            + "%"
        )
        cond.append(exists().where(Run.job_id == Job.id, Run.prompt.ilike(pattern, escape="\\")))
    for tag in f.tags:
        cond.append(exists().where(JobTag.job_id == Job.id, JobTag.tag == tag))
    if f.has_ablations is not None:
        ablated = exists().where(Run.job_id == Job.id, Run.has_ablations.is_(True))
        cond.append(ablated if f.has_ablations else ~ablated)
    for key in f.ablates:  # models.store.run_keys keys, e.g. "mlp_neuron:3:2,100"
        cond.append(exists().where(RunAblation.job_id == Job.id, RunAblation.key == key))
    if f.since is not None:
        cond.append(Job.created_at >= f.since)
    if f.until is not None:
        cond.append(Job.created_at < f.until)
    return cond


def list_jobs(
    session: Session, f: JobFilter, limit: int = 50, before: str | None = None
) -> tuple[list[Job], str | None]:
    """Jobs matching ``f``, newest first, at most ``limit``; and the cursor of the next page.

    Ids sort by creation time, so the cursor is simply the last id shown.
    """
    query = select(Job).where(*_filter_conditions(f))
    if before:
        query = query.where(Job.id < before)
    jobs = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    if len(jobs) > limit:
        return jobs[:limit], jobs[limit - 1].id
    return jobs, None
