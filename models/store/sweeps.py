"""Sweeps in the store: the sweep row, its points, the jobs that run them, and its progress.

The lifecycle follows the job table's rules (``models.store.jobs``): a conditional claim
(``queued -> started``, or a started sweep whose heartbeat is stale: its worker died and the
broker delivered the message again), heartbeats, and final writes only by the attempt that holds
it. The baseline and the points are jobs (``create_job``) made by the worker once it knows every
point's value; they are marked published, since the sweep's message carries them (the reaper
would otherwise send each its own message), and tagged ``sweep:ID``. A cancel cancels the
points not yet run and stops the sweep at its next pass.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.store.jobs import create_job, new_job_id
from models.store.lifecycle import FINAL_STATUSES, JobStatus
from models.store.recovery import request_cancel
from models.store.tables import Job, Run, Sweep, SweepPoint, utcnow

SWEEP_TASK = "actq.run_sweep"  # the Celery task of a sweep (``worker.sweeps``)
FINAL = frozenset(s.value for s in FINAL_STATUSES)


def sweep_tag(sweep_id: str) -> str:
    return f"sweep:{sweep_id}"


def create_sweep(session: Session, points: list[dict[str, Any]], **fields: Any) -> Sweep:
    sweep = Sweep(id=new_job_id(), status=JobStatus.QUEUED.value, n_points=len(points), **fields)
    session.add(sweep)
    session.flush()
    session.add_all(
        SweepPoint(
            sweep_id=sweep.id,
            index=i,
            node_type=p["nodeType"],
            layer=p["layer"],
            node_index=p["index"],
            position=p["position"],
            value=p["value"],
        )
        for i, p in enumerate(points)
    )
    return sweep


def _held(sweep_id: str, attempt: int):
    return and_(
        Sweep.id == sweep_id, Sweep.status == JobStatus.STARTED.value, Sweep.attempts == attempt
    )


def _update(session: Session, *where, **values) -> int:
    result = session.execute(
        update(Sweep).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount


def claim_sweep(
    session: Session, sweep_id: str, worker: str, lease_seconds: float, max_attempts: int
) -> int | None:
    """Claim a queued sweep, or a started one whose worker stopped beating; the attempt or None."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=lease_seconds)
    claimable = or_(
        Sweep.status == JobStatus.QUEUED.value,
        and_(Sweep.status == JobStatus.STARTED.value, Sweep.heartbeat_at < stale),
    )
    claimed = _update(
        session,
        Sweep.id == sweep_id,
        claimable,
        Sweep.attempts < max_attempts,
        status=JobStatus.STARTED.value,
        attempts=Sweep.attempts + 1,
        worker=worker,
        started_at=now,
        heartbeat_at=now,
    )
    if claimed != 1:
        return None
    return session.execute(select(Sweep.attempts).where(Sweep.id == sweep_id)).scalar_one()


def beat(session: Session, sweep_id: str, attempt: int) -> bool:
    """Refresh the heartbeat; False when this attempt no longer holds the sweep."""
    return _update(session, _held(sweep_id, attempt), heartbeat_at=utcnow()) == 1


def cancel_asked(session: Session, sweep_id: str) -> bool:
    asked = session.scalar(select(Sweep.cancel_requested_at).where(Sweep.id == sweep_id))
    return asked is not None


def end_sweep(
    session: Session, sweep_id: str, attempt: int, status: str, error: dict | None = None
) -> bool:
    now = utcnow()
    ended = _update(
        session,
        _held(sweep_id, attempt),
        status=status,
        error=error,
        finished_at=now,
        heartbeat_at=now,
    )
    return ended == 1


def request_sweep_cancel(session: Session, sweep: Sweep) -> str:
    """Cancel a queued sweep now, or ask a started one to stop; its points not yet run are
    canceled either way. Returns the sweep's status after."""
    now = utcnow()
    if sweep.status in FINAL:
        return sweep.status
    _update(
        session, Sweep.id == sweep.id, Sweep.cancel_requested_at.is_(None), cancel_requested_at=now
    )
    _update(
        session,
        Sweep.id == sweep.id,
        Sweep.status == JobStatus.QUEUED.value,
        status=JobStatus.CANCELED.value,
        finished_at=now,
    )
    for job_id in session.scalars(
        select(SweepPoint.job_id).where(
            SweepPoint.sweep_id == sweep.id, SweepPoint.job_id.is_not(None)
        )
    ):
        request_cancel(session, job_id, now)
    if sweep.baseline_job_id:
        request_cancel(session, sweep.baseline_job_id, now)
    return session.scalar(select(Sweep.status).where(Sweep.id == sweep.id))


def fail_queued_jobs(session: Session, sweep_id: str, error: dict, now: dt.datetime) -> int:
    """Fail the baseline's and points' jobs still queued of a sweep the reaper failed: their
    message was the sweep's, so nothing else would run them. Jobs another worker holds are left
    to it (and to the jobs' reaper)."""
    sweep = session.get(Sweep, sweep_id)
    ids = [sweep.baseline_job_id] if sweep.baseline_job_id else []
    ids += [p.job_id for p in points_of(session, sweep_id) if p.job_id]
    if not ids:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def points_of(session: Session, sweep_id: str) -> list[SweepPoint]:
    query = select(SweepPoint).where(SweepPoint.sweep_id == sweep_id).order_by(SweepPoint.index)
    return list(session.scalars(query))


def make_jobs(
    session: Session, sweep: Sweep, requests: list[dict[str, Any]], values: list[float]
) -> None:
    """The baseline's job (``requests[0]``) and each point's, published with the sweep's message."""
    tags = sorted({*(sweep.tags or []), sweep_tag(sweep.id)})
    now = utcnow()

    def job(request: dict[str, Any], label: str | None) -> Job:
        made = create_job(
            session,
            endpoint=sweep.endpoint,
            model=sweep.model,
            model_revision=sweep.model_revision,
            request=request,
            label=label,
            tags=tags,
            owner=sweep.owner,
            autoencoders=sweep.autoencoders,
        )
        made.published_at = now
        return made

    sweep.baseline_job_id = job(requests[0], sweep.label or "sweep baseline").id
    for point, request, value in zip(
        points_of(session, sweep.id), requests[1:], values, strict=True
    ):
        point.value = value
        point.job_id = job(request, sweep.label).id


def record_point(session: Session, sweep_id: str, index: int, loss, node_value) -> None:
    session.execute(
        update(SweepPoint)
        .where(SweepPoint.sweep_id == sweep_id, SweepPoint.index == index)
        .values(loss=loss, node_value=node_value)
        .execution_options(synchronize_session=False)
    )


def job_losses(session: Session, job_ids: list[str]) -> dict[str, float | None]:
    """The loss of each job's run 0, as ``finish_job`` stored it (whoever ran the job: a point
    requeued after its worker died may be finished by a single job's task)."""
    query = select(Run.job_id, Run.loss).where(Run.job_id.in_(job_ids), Run.index == 0)
    return dict(session.execute(query).all())


def point_statuses(session: Session, sweep_id: str) -> dict[int, str]:
    """Each point's job status (``pending`` before its job exists)."""
    query = (
        select(SweepPoint.index, Job.status)
        .outerjoin(Job, Job.id == SweepPoint.job_id)
        .where(SweepPoint.sweep_id == sweep_id)
    )
    return {index: status or JobStatus.QUEUED.value for index, status in session.execute(query)}


def progress(session: Session, sweep: Sweep) -> dict[str, int]:
    counts = Counter(point_statuses(session, sweep.id).values())
    done = sum(n for status, n in counts.items() if status in FINAL)
    return {
        "done": done,
        "of": sweep.n_points,
        "finished": counts.get(JobStatus.FINISHED.value, 0),
        "failed": counts.get(JobStatus.FAILED.value, 0),
        "canceled": counts.get(JobStatus.CANCELED.value, 0),
    }
