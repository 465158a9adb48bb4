"""Data functions that keep jobs moving when processes die: the outbox, the reaper, cancellation.

* **Outbox**: a job is committed ``queued`` with ``published_at`` NULL; whoever hands its message
  to the broker marks it published. A queued job still unpublished after a grace period (the API
  died between commit and publish, or the broker was down) is published again by the reaper, and
  when the broker lost its messages (Redis restarted without persistence) every queued job is
  marked unpublished so that it gets a new message. A duplicate message is harmless: the claim
  step (``models.store.jobs.claim_job``) runs a job once per attempt.
* **Reaper**: a ``started`` job whose heartbeat is older than the lease lost its worker. It goes
  back to ``queued`` (unpublished, so it is published again), unless it has used all its attempts
  (then it fails with ``worker_lost``) or someone asked to cancel it (then it is ``canceled``).
* **Cancellation**: a queued job is canceled at once; a started one gets ``cancel_requested_at``
  and its worker stops at the next stage boundary (``worker.tasks``).
* **Time limits**: a job whose worker process was killed at the hard time limit fails with
  ``timeout``.

Every write is a conditional ``UPDATE``, so two reapers (one per worker) never act twice on one
job. Functions take a ``session`` and leave the transaction to the caller.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.store import jobs
from models.store.lifecycle import JobStatus
from models.store.tables import Job, utcnow

REAP_BATCH = 500  # jobs looked at per sweep; the next sweep takes the rest


def _update(session: Session, *where, **values) -> int:
    result = session.execute(
        update(Job).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount


# --- the outbox -----------------------------------------------------------------------------


def mark_published(session: Session, job_id: str, now: dt.datetime | None = None) -> bool:
    """Record that the broker took the job's message."""
    return _update(session, Job.id == job_id, published_at=now or utcnow()) == 1


def unpublish(session: Session, job_id: str) -> bool:
    """Put a queued job back in the outbox: its message was spent on another job's turn
    (``models.store.fairness``), so it needs a new one."""
    return (
        _update(session, Job.id == job_id, Job.status == JobStatus.QUEUED.value, published_at=None)
        == 1
    )


def unpublished_jobs(
    session: Session, older_than: dt.datetime, limit: int = REAP_BATCH
) -> list[tuple[str, str]]:
    """(id, model) of queued jobs with no message, oldest first.

    A job never claimed counts once it is older than ``older_than`` (until then the API that made
    it may still be publishing it); a requeued one (claimed before) counts at once.
    """
    query = (
        select(Job.id, Job.model)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.published_at.is_(None),
            or_(Job.created_at < older_than, Job.attempts > 0),
        )
        .order_by(Job.id)
        .limit(limit)
    )
    return [(job_id, model) for job_id, model in session.execute(query)]


def forget_publications(session: Session) -> int:
    """Mark every queued job unpublished (the broker lost its messages); returns how many."""
    return _update(
        session,
        Job.status == JobStatus.QUEUED.value,
        Job.published_at.is_not(None),
        published_at=None,
    )


# --- the reaper -----------------------------------------------------------------------------


@dataclass
class Reaped:
    """What one sweep did, by job id."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.canceled)


def worker_lost_error(attempts: int, max_attempts: int) -> dict[str, Any]:
    return {
        "type": "worker_lost",
        "message": (
            f"the worker running this job stopped (killed, out of memory or lost) on each of "
            f"its {attempts} attempts; a job is tried at most {max_attempts} times "
            "(ACTQ_MAX_ATTEMPTS)"
        ),
        "path": None,
        "status": 500,
    }


def timeout_error(seconds: float | None, hard: bool) -> dict[str, Any]:
    limit = "ACTQ_JOB_TIME_LIMIT" if hard else "ACTQ_JOB_SOFT_TIME_LIMIT"
    after = f" after {seconds:g}s" if seconds is not None else ""
    return {
        "type": "timeout",
        "message": f"the job ran past its time limit{after} ({limit}) and was stopped",
        "path": None,
        "status": 504,
    }


def _stale(job_id: str, attempts: int, stale_before: dt.datetime):
    """The job is still in the stale state the reaper saw (no one claimed it meanwhile)."""
    return (
        Job.id == job_id,
        Job.status == JobStatus.STARTED.value,
        Job.attempts == attempts,
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
    )


def reap(
    session: Session,
    lease_seconds: float,
    max_attempts: int,
    now: dt.datetime | None = None,
    limit: int = REAP_BATCH,
) -> Reaped:
    """Handle started jobs whose heartbeat is older than the lease (their worker is gone)."""
    now = now or utcnow()
    stale_before = now - dt.timedelta(seconds=lease_seconds)
    query = (
        select(Job.id, Job.attempts, Job.cancel_requested_at)
        .where(
            Job.status == JobStatus.STARTED.value,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
        )
        .order_by(Job.id)
        .limit(limit)
    )
    done = Reaped()
    for job_id, attempts, cancel_requested in session.execute(query).all():
        still = _stale(job_id, attempts, stale_before)
        if cancel_requested is not None:
            if _update(session, *still, status=JobStatus.CANCELED.value, finished_at=now):
                done.canceled.append(job_id)
        elif attempts >= max_attempts:
            error = worker_lost_error(attempts, max_attempts)
            if _update(
                session, *still, status=JobStatus.FAILED.value, error=error, finished_at=now
            ):
                done.failed.append(job_id)
        elif _update(
            session,
            *still,
            status=JobStatus.QUEUED.value,
            worker=None,
            heartbeat_at=None,
            published_at=None,
        ):
            done.requeued.append(job_id)
    return done


def held_by_node(session: Session, node: str) -> list[tuple[str, str]]:
    """(id, worker) of the started jobs held by the processes of Celery node ``node``."""
    query = select(Job.id, Job.worker).where(
        Job.status == JobStatus.STARTED.value, Job.worker.startswith(f"{node}:", autoescape=True)
    )
    return [(job_id, worker) for job_id, worker in session.execute(query)]


def fail_timed_out(
    session: Session,
    job_id: str,
    worker_prefix: str,
    seconds: float | None,
    holder: str | None = None,
) -> bool:
    """Fail a started job held by a worker process killed at the hard time limit.

    ``worker_prefix`` is the Celery node name that ran it (``Job.worker`` is ``NODE:PID``), so a
    job that another worker took over meanwhile is left alone; ``holder``, when given, is the
    exact ``NODE:PID``.
    """
    held = (
        Job.worker == holder
        if holder
        else Job.worker.startswith(f"{worker_prefix}:", autoescape=True)
    )
    return (
        _update(
            session,
            Job.id == job_id,
            Job.status == JobStatus.STARTED.value,
            held,
            status=JobStatus.FAILED.value,
            error=timeout_error(seconds, hard=True),
            finished_at=utcnow(),
        )
        == 1
    )


# --- cancellation ---------------------------------------------------------------------------


def request_cancel(session: Session, job_id: str, now: dt.datetime | None = None) -> str | None:
    """Cancel a queued job now, or ask a started one to stop; returns the job's status after.

    None when there is no such job. A final job is left as it is (its status is returned).
    """
    now = now or utcnow()
    queued = (Job.id == job_id, Job.status == JobStatus.QUEUED.value)
    if _update(
        session, *queued, status=JobStatus.CANCELED.value, finished_at=now, cancel_requested_at=now
    ):
        return JobStatus.CANCELED.value
    started = (Job.id == job_id, Job.status == JobStatus.STARTED.value)
    _update(session, *started, Job.cancel_requested_at.is_(None), cancel_requested_at=now)
    return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()


def cancel_requested(session: Session, job_id: str, attempt: int) -> bool:
    """True when someone asked the holder of ``attempt`` to stop."""
    query = select(Job.id).where(
        Job.id == job_id,
        Job.status == JobStatus.STARTED.value,
        Job.attempts == attempt,
        Job.cancel_requested_at.is_not(None),
    )
    return session.execute(query).first() is not None


def store_unless_canceled(
    session: Session, job_id: str, attempt: int, outcome, losses: list | None, seconds: float
) -> str:
    """Store a job's outcome (its response text with ``losses``, or with ``losses`` None its
    error record) unless a cancel was asked for, which the same UPDATE looks at, so a cancel
    that arrives after the worker's last look is never overwritten by the outcome; the job's
    status then, ``canceled``, or ``superseded`` (the attempt no longer holds the job)."""
    if losses is not None:
        stored = jobs.finish_job(session, job_id, attempt, outcome, losses, seconds, True)
    else:
        stored = jobs.fail_job(session, job_id, attempt, outcome, unless_canceled=True)
    if stored:
        return JobStatus.FINISHED.value if losses is not None else JobStatus.FAILED.value
    if cancel_held(session, job_id, attempt):
        return JobStatus.CANCELED.value
    return "superseded"


def cancel_held(session: Session, job_id: str, attempt: int) -> bool:
    """Mark the job ``canceled`` if this attempt still holds it."""
    held = and_(Job.id == job_id, Job.status == JobStatus.STARTED.value, Job.attempts == attempt)
    now = utcnow()
    return _update(session, held, status=JobStatus.CANCELED.value, finished_at=now) == 1
