"""The outbox and the reaper for the tables with a job's lifecycle beside ``jobs``: record sets
(``RecordSet``) and sweeps (``Sweep``), by the rules ``models.store.recovery`` gives jobs.

* **Outbox**: a row is committed ``queued`` with ``published_at`` NULL and marked when the broker
  took its message; a queued row still unpublished after the grace period (the API died between
  commit and publish, the broker was down) or sent back by the reaper is published again, and
  when the broker lost its messages every queued row is marked unpublished.
* **Reaper**: a ``started`` row whose heartbeat is older than the lease lost its worker: back to
  ``queued`` (unpublished), or ``failed`` with ``worker_lost`` after ``ACTQ_MAX_ATTEMPTS`` claims.

Each function takes the table class; it needs the columns ``id``, ``model``, ``status``,
``attempts``, ``heartbeat_at``, ``published_at``, ``created_at``, ``worker``, ``error`` and
``finished_at``. A duplicate message is harmless: each table's claim is conditional. Every write
is a conditional ``UPDATE``; functions leave the transaction to the caller.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.store.lifecycle import JobStatus
from models.store.recovery import REAP_BATCH, Reaped, worker_lost_error
from models.store.tables import RecordSet, Sweep, utcnow

SideTable = type[RecordSet] | type[Sweep]


def _update(session: Session, table: SideTable, *where, **values) -> int:
    statement = update(table).where(*where).values(**values)
    return session.execute(statement.execution_options(synchronize_session=False)).rowcount


def mark_published(
    session: Session, table: SideTable, row_id: str, now: dt.datetime | None = None
) -> bool:
    return _update(session, table, table.id == row_id, published_at=now or utcnow()) == 1


def unpublished(
    session: Session, table: SideTable, older_than: dt.datetime, limit: int = REAP_BATCH
) -> list[tuple[str, str]]:
    """(id, model) of queued rows with no message: never claimed and older than ``older_than``,
    or sent back by the reaper (claimed before)."""
    query = (
        select(table.id, table.model)
        .where(
            table.status == JobStatus.QUEUED.value,
            table.published_at.is_(None),
            or_(table.created_at < older_than, table.attempts > 0),
        )
        .order_by(table.id)
        .limit(limit)
    )
    return [(row_id, model) for row_id, model in session.execute(query)]


def forget_publications(session: Session, table: SideTable) -> int:
    return _update(
        session,
        table,
        table.status == JobStatus.QUEUED.value,
        table.published_at.is_not(None),
        published_at=None,
    )


def reap(
    session: Session,
    table: SideTable,
    lease_seconds: float,
    max_attempts: int,
    now: dt.datetime | None = None,
    limit: int = REAP_BATCH,
) -> Reaped:
    """Started rows whose heartbeat is older than the lease: requeued, or failed at the limit."""
    now = now or utcnow()
    stale_before = now - dt.timedelta(seconds=lease_seconds)
    stale = or_(table.heartbeat_at.is_(None), table.heartbeat_at < stale_before)
    query = (
        select(table.id, table.attempts)
        .where(table.status == JobStatus.STARTED.value, stale)
        .order_by(table.id)
        .limit(limit)
    )
    done = Reaped()
    for row_id, attempts in session.execute(query).all():
        still = and_(
            table.id == row_id,
            table.status == JobStatus.STARTED.value,
            table.attempts == attempts,
            stale,
        )
        if attempts >= max_attempts:
            error = worker_lost_error(attempts, max_attempts)
            failed = _update(
                session, table, still, status=JobStatus.FAILED.value, error=error, finished_at=now
            )
            if failed:
                done.failed.append(row_id)
        elif _update(
            session,
            table,
            still,
            status=JobStatus.QUEUED.value,
            worker=None,
            heartbeat_at=None,
            published_at=None,
        ):
            done.requeued.append(row_id)
    return done
