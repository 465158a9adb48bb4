"""Co-batching: a worker sent one job also claims waiting jobs for its model and runs their passes
together (``ACTQ_BATCH_JOBS``, default 8 jobs at once; 1 turns it off).

* **Claim**: the lead is the job the fair order between owners chose for the message
  (``worker.claims.claim``); ``claim_companions`` is the one place that picks the others: up
  to N - 1 queued jobs for the lead's model, in that same order (``models.store.fairness``),
  each claimed with the same conditional UPDATE as a job sent alone (``claim_job``), so a job
  another worker claimed first is skipped and nothing is claimed twice. Their own messages, delivered later, claim nothing.
* **Death**: every claimed job has its own heartbeat while the pack runs; a worker killed
  mid-pack leaves them all ``started`` with a stale heartbeat, and the reaper requeues each one
  (``models.store.recovery``).
* **Answers**: the engine answers the jobs with shared passes (``worker.engine.run_many``),
  each exactly as alone; each job is stored and announced as soon as its own part is done.
  Cancels are honoured before the pack and, for each job as its answer comes, by the store
  itself, which does not store an outcome over a cancel asked for meanwhile
  (``recovery.store_unless_canceled``, in the same UPDATE): a job canceled while its pack runs
  ends ``canceled``, never ``finished``.
* **Anything else** (the pack's engine stage fails or times out, the model cannot be loaded)
  falls back to running the remaining jobs one by one, as alone. A debug delay
  (``ACTQ_DEBUG_DELAYS``) delays the whole pack by its members' longest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.errors import ActqError
from models.store import fairness
from models.store.runs import run_losses
from models.wire.encoding import dumps
from worker.claims import Claimed, Publish, claim, claim_exact
from worker.execution import (
    FINAL_STATUSES,
    effective_limits,
    error_record,
    heartbeat,
    release_memory,
    run_claimed,
    stop_if_canceled,
    store_outcome,
    worker_name,
)
from worker.limits import JobLimits, soft_time_limit
from worker.normalization import with_record_normalization
from worker.watch import memory_guard

log = logging.getLogger(__name__)


def claim_companions(
    sessions: sessionmaker[Session],
    lead_id: str,
    model_name: str,
    worker: str,
    limits: JobLimits,
    count: int,
    place: dict[str, int] | None = None,
) -> list[tuple[str, Claimed]]:
    """Claim up to ``count`` waiting jobs for ``model_name`` besides ``lead_id``; ``place``: the
    queued jobs' places in the fair order, when the lead's claim read them."""
    if count <= 0:
        return []
    if place is None:
        with sessions() as session:
            place = fairness.queue_positions(session, model_name, limits.max_attempts)
    candidates = [j for j in sorted(place, key=place.__getitem__) if j != lead_id][: 2 * count]
    claimed = []
    for job_id in candidates:
        job = claim_exact(sessions, job_id, worker, limits.lease_seconds, limits.max_attempts)
        if job is not None:
            log.info(
                "Job %s: claimed by %s with %s (attempt %d)", job_id, worker, lead_id, job.attempt
            )
            claimed.append((job_id, job))
            if len(claimed) == count:
                break
    return claimed


def execute_jobs(
    sessions: sessionmaker[Session],
    job_id: str,
    *,
    model: Callable[[], Any],
    batch_jobs: int,
    announce: Callable[[str], None],
    worker: str | None = None,
    limits: JobLimits | None = None,
    publish: Publish | None = None,
) -> str | None:
    """``execute_job`` for a message of ``job_id``, run together with up to ``batch_jobs - 1``
    waiting jobs; returns the final status of the job the message's turn ran (None if nothing
    was claimable).

    The lead is the job the fair order between owners puts first (``claims.claim``, which
    may be another job than ``job_id``, sent again with ``publish``); its companions ride along.
    Every job claimed here is run to its end and announced (``announce(id)``) before this
    returns."""
    worker = worker or worker_name()
    limits = effective_limits(limits)
    lead = claim(
        sessions,
        job_id,
        worker,
        limits.lease_seconds,
        limits.max_attempts,
        publish,
        waiting=batch_jobs > 1,
    )
    if lead is None:
        log.info("Job %s: not claimable (duplicate message or already done)", job_id)
        return None
    lead_id = lead.job_id
    log.info("Job %s: claimed by %s (attempt %d)", lead_id, worker, lead.attempt)
    jobs = [(lead_id, lead)]
    if lead.endpoint != "model_info":
        count = batch_jobs - 1
        jobs += claim_companions(sessions, lead_id, lead.model, worker, limits, count, lead.queued)
    if len(jobs) == 1:
        kept: list = []  # the response's objects, freed once the job is announced
        status = run_claimed(
            sessions, lead_id, lead, model=model, limits=limits, looked=True, keep=kept
        )
        if status in FINAL_STATUSES:
            announce(lead_id)
        kept.clear()
        return status
    statuses = run_together(sessions, jobs, model, limits, announce)
    return statuses[lead_id]


def run_together(
    sessions, jobs: list[tuple[str, Claimed]], model, limits: JobLimits, announce
) -> dict[str, str]:
    """Run claimed jobs with shared passes; each job's final status by id."""
    statuses: dict[str, str] = {}

    def done(job_id: str, status: str) -> None:
        statuses[job_id] = status
        announce(job_id)

    with ExitStack() as beats:
        for job_id, job in jobs:
            beats.enter_context(heartbeat(sessions, job_id, job.attempt, limits.heartbeat_seconds))
        pending = []
        for job_id, job in jobs:
            stopped = stop_if_canceled(sessions, job_id, job.attempt, limits.store_patience)
            if stopped:
                done(job_id, stopped)
            else:
                pending.append((job_id, job))
        _run_pack(sessions, pending, model, limits, done)
        for job_id, job in jobs:  # what the pack did not answer runs alone
            if job_id not in statuses:
                done(job_id, run_claimed(sessions, job_id, job, model=model, limits=limits))
    return statuses


def _run_pack(sessions, pending, model, limits: JobLimits, done) -> None:
    if len(pending) < 2:
        return
    try:
        loaded = model()
    except Exception:  # run alone, each job fails as it would
        return
    if any(getattr(loaded, "name", job.model) != job.model for _, job in pending):
        return
    from worker.engine import run_many

    start = time.perf_counter()

    def answered(i: int, outcome) -> None:
        job_id, job = pending[i]
        seconds = time.perf_counter() - start
        record, losses = _outcome(sessions, job, outcome, loaded)
        # the store looks for a cancel in its own UPDATE: asked for meanwhile, the job is canceled
        status = store_outcome(
            sessions, job_id, job.attempt, record, losses, seconds, limits.store_patience
        )
        log.info(
            "Job %s: %s in %.3fs of engine time, shared with %d jobs (attempt %d)",
            job_id,
            status,
            seconds,
            len(pending) - 1,
            job.attempt,
        )
        done(job_id, status)

    requests = [(job.endpoint, job.request) for _, job in pending]
    delay = max(limits.delay_for(job.tags) for _, job in pending)
    try:
        with soft_time_limit(limits.soft_time_limit), memory_guard(limits.memory_guard_bytes):
            time.sleep(delay)  # ACTQ_DEBUG_DELAYS: rehearsing a slow pack (0 otherwise)
            run_many(requests, loaded, answered)
    except Exception as error:  # the pack as a whole failed: what is left runs alone
        log.warning("A shared pass of %d jobs failed (%s); running them alone", len(pending), error)
        release_memory()


def _outcome(sessions, job: Claimed, outcome, loaded) -> tuple[Any, Any]:
    """(response text, losses) or (error record, None), as ``run_engine`` stores them."""
    if isinstance(outcome, ActqError):
        return error_record(outcome), None
    try:
        response = with_record_normalization(
            sessions, job.endpoint, job.request, outcome, getattr(loaded, "tokenizer", None)
        )
        return dumps(response), run_losses(job.endpoint, response)
    except Exception as error:
        return error_record(error), None
