"""Records jobs in the outbox and the reaper, by the rules ``models.store.recovery`` gives jobs.

* **Outbox**: a record set is committed ``queued`` with ``published_at`` NULL and marked when the
  broker took its message; a queued set still unpublished after the grace period (the API died
  between commit and publish, the broker was down) or sent back by the reaper is published again,
  and when the broker lost its messages every queued set is marked unpublished.
* **Reaper**: a ``started`` set whose heartbeat is older than the lease lost its worker: back to
  ``queued`` (unpublished), or ``failed`` with ``worker_lost`` after ``ACTQ_MAX_ATTEMPTS`` claims.

A duplicate message is harmless: ``claim_record_set`` is conditional. Every write is a
conditional ``UPDATE``; functions leave the transaction to the caller.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.store.lifecycle import JobStatus
from models.store.recovery import REAP_BATCH, Reaped, worker_lost_error
from models.store.tables import RecordSet, utcnow


def _update(session: Session, *where, **values) -> int:
    statement = update(RecordSet).where(*where).values(**values)
    return session.execute(statement.execution_options(synchronize_session=False)).rowcount


def mark_set_published(session: Session, set_id: str, now: dt.datetime | None = None) -> bool:
    return _update(session, RecordSet.id == set_id, published_at=now or utcnow()) == 1


def unpublished_sets(
    session: Session, older_than: dt.datetime, limit: int = REAP_BATCH
) -> list[tuple[str, str]]:
    """(id, model) of queued sets with no message: never claimed and older than ``older_than``,
    or sent back by the reaper (claimed before)."""
    query = (
        select(RecordSet.id, RecordSet.model)
        .where(
            RecordSet.status == JobStatus.QUEUED.value,
            RecordSet.published_at.is_(None),
            or_(RecordSet.created_at < older_than, RecordSet.attempts > 0),
        )
        .order_by(RecordSet.id)
        .limit(limit)
    )
    return [(set_id, model) for set_id, model in session.execute(query)]


def forget_set_publications(session: Session) -> int:
    return _update(
        session,
        RecordSet.status == JobStatus.QUEUED.value,
        RecordSet.published_at.is_not(None),
        published_at=None,
    )


def reap_sets(
    session: Session,
    lease_seconds: float,
    max_attempts: int,
    now: dt.datetime | None = None,
    limit: int = REAP_BATCH,
) -> Reaped:
    """Started sets whose heartbeat is older than the lease: requeued, or failed at the limit."""
    now = now or utcnow()
    stale_before = now - dt.timedelta(seconds=lease_seconds)
    stale = or_(RecordSet.heartbeat_at.is_(None), RecordSet.heartbeat_at < stale_before)
    query = (
        select(RecordSet.id, RecordSet.attempts)
        .where(RecordSet.status == JobStatus.STARTED.value, stale)
        .order_by(RecordSet.id)
        .limit(limit)
    )
    done = Reaped()
    for set_id, attempts in session.execute(query).all():
        still = and_(
            RecordSet.id == set_id,
            RecordSet.status == JobStatus.STARTED.value,
            RecordSet.attempts == attempts,
            stale,
        )
        if attempts >= max_attempts:
            error = worker_lost_error(attempts, max_attempts)
            if _update(session, still, status=JobStatus.FAILED.value, error=error, finished_at=now):
                done.failed.append(set_id)
        elif _update(
            session,
            still,
            status=JobStatus.QUEUED.value,
            worker=None,
            heartbeat_at=None,
            published_at=None,
        ):
            done.requeued.append(set_id)
    return done
