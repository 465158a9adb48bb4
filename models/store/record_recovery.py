"""Records jobs in the outbox and the reaper: ``models.store.side_recovery`` on ``RecordSet``.

These names are kept for their callers (``api.records``, the tests); sweeps use
``side_recovery`` on ``Sweep`` the same way.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from models.store import side_recovery
from models.store.recovery import REAP_BATCH, Reaped
from models.store.tables import RecordSet


def mark_set_published(session: Session, set_id: str, now: dt.datetime | None = None) -> bool:
    return side_recovery.mark_published(session, RecordSet, set_id, now)


def unpublished_sets(
    session: Session, older_than: dt.datetime, limit: int = REAP_BATCH
) -> list[tuple[str, str]]:
    return side_recovery.unpublished(session, RecordSet, older_than, limit)


def forget_set_publications(session: Session) -> int:
    return side_recovery.forget_publications(session, RecordSet)


def reap_sets(
    session: Session,
    lease_seconds: float,
    max_attempts: int,
    now: dt.datetime | None = None,
    limit: int = REAP_BATCH,
) -> Reaped:
    return side_recovery.reap(session, RecordSet, lease_seconds, max_attempts, now, limit)
