"""Claiming a job for a run: the fair turn between owners and one conditional UPDATE.

A message is a turn of its model's queue (``models.store.fairness``): ``claim`` takes the job the
fair order puts first, which may be another job than the message's own (then the message's job
goes back to the outbox and is published again); ``claim_exact`` takes one given job (a
co-batching worker's companions). Both claim with ``models.store.jobs.claim_job_returning``,
whose UPDATE also returns what the run needs, so a claim is one round trip, and a job that is
not claimable (final, canceled, held by a live worker) claims nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.store import fairness, recovery
from models.store import jobs as store
from models.store.tables import Job

log = logging.getLogger(__name__)

Publish = Callable[[str, str], None]  # (job id, model): send the job's message again


@dataclass(frozen=True)
class Claimed:
    job_id: str  # the job claimed: the message's own, or the one the fair order put first
    attempt: int
    endpoint: str
    model: str
    request: Any
    tags: list[str]
    # claim(waiting=True): the model's queued jobs and their places in the fair order, read in
    # the claim's own transaction (a co-batching worker's candidates, ``worker.cobatch``)
    queued: dict[str, int] | None = None


def claim(
    sessions: sessionmaker[Session],
    job_id: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
    publish: Publish | None = None,
    waiting: bool = False,
) -> Claimed | None:
    """Claim the job the fair order puts first for a message of ``job_id``
    (``models.store.fairness``); returns what the run needs, or None.

    When that is another job, ``job_id`` goes back to the outbox in the same transaction and is
    published again with ``publish`` (else by the reaper). ``waiting``: the claimed job's
    ``queued`` holds its model's queued jobs (none for ``model_info``), read in the same
    transaction rather than in one of their own."""
    with sessions.begin() as session:
        chosen = fairness.next_fair_job(session, job_id, max_attempts)
        claimed = None
        if chosen != job_id:
            claimed = _claim(session, chosen, worker, lease_seconds, max_attempts)
        if claimed is None:  # its own turn, or another worker took the chosen job first
            chosen = job_id
            claimed = _claim(session, job_id, worker, lease_seconds, max_attempts)
        if claimed is None:
            return None
        # the message's job, if still queued, needs a new message: it goes back to the outbox
        republish = chosen != job_id and recovery.unpublish(session, job_id)
        if waiting and claimed.endpoint != "model_info":
            queued = fairness.queue_positions(session, claimed.model, max_attempts)
            claimed = replace(claimed, queued=queued)
    if chosen != job_id:
        log.info("Job %s: its turn went to %s (fair order between owners)", job_id, chosen)
    if republish:
        _republish(sessions, job_id, claimed.model, publish)
    return claimed


def claim_exact(
    sessions: sessionmaker[Session],
    job_id: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
) -> Claimed | None:
    """Claim ``job_id`` itself, or None: a co-batching worker's companions (``worker.cobatch``),
    which ride along with a job the fair order already chose."""
    with sessions.begin() as session:
        return _claim(session, job_id, worker, lease_seconds, max_attempts)


def _claim(
    session: Session, job_id: str, worker: str, lease_seconds: float, max_attempts: int | None
) -> Claimed | None:
    """Claim ``job_id``; what running it needs comes back with the claim's UPDATE (not the whole
    row and its runs, and no second query), or None when it was not claimable."""
    row = store.claim_job_returning(
        session,
        job_id,
        worker,
        lease_seconds,
        max_attempts=max_attempts,
        returning=(Job.endpoint, Job.model, Job.request, Job.tags),
    )
    if row is None:
        return None
    return Claimed(job_id, row.attempts, row.endpoint, row.model, row.request, list(row.tags or []))


def _republish(sessions, job_id: str, model: str, publish: Publish | None) -> None:
    """Send a message again for a job whose turn another job took; the reaper does it if this
    fails (the job is in the outbox)."""
    if publish is None:
        return
    try:
        publish(job_id, model)
        with sessions.begin() as session:
            recovery.mark_published(session, job_id)
    except Exception as error:  # the broker or the database is away: the reaper will publish it
        log.warning("Job %s: could not publish it again (%s); the reaper will", job_id, error)
