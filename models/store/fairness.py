"""Fairness between owners: which queued job of a model runs next, and a job's place in line.

Celery hands a worker the messages of a model's queue in the order they were published, so
without this one owner's 40 queued jobs would keep another owner's one job waiting behind all of
them. Instead a message is a turn for its model's queue: the worker that takes it claims the job
that the **fair order** puts first, which may be another job than the message's own:

* among the owners with a queued job of the model, the owner with the fewest ``started`` jobs
  of the model goes first; ties go to the owner whose last job of the model started longest ago
  (never started first), then to the oldest queued job. With one worker this is round-robin
  between owners;
* within an owner, jobs run in the order of their messages, and a job whose turn went to
  another owner runs before that owner's younger jobs.

When the chosen job is not the message's own, the message's job goes back to the outbox
(``published_at`` NULL, in the claim's transaction) and the worker publishes it again at once;
the reaper publishes it if that fails. The chosen job's own message, delivered later, finds it
claimed and is a no-op, as any duplicate. So every queued job keeps a message or an outbox mark
and none is lost (``models.store.recovery``).

``queue_positions`` plays the same order forward over a model's queued jobs: a job's
``queuePosition`` is the number of queued jobs that the order runs before it now.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models.store.lifecycle import JobStatus
from models.store.tables import Job

_NEVER = dt.datetime.min


@dataclass(frozen=True)
class OwnerLoad:
    """What the fair order knows of one owner with queued jobs of a model."""

    started: int  # jobs of the model now started
    last_started: dt.datetime | None  # when its latest job of the model started

    def key(self) -> tuple[int, dt.datetime]:
        last = self.last_started or _NEVER
        return self.started, last.replace(tzinfo=None)


def _owner_in(owners: list[str | None]):
    named = [o for o in owners if o is not None]
    cond = Job.owner.in_(named)
    return or_(cond, Job.owner.is_(None)) if None in owners else cond


def _loads(session: Session, model: str, owners: list[str | None]) -> dict[str | None, OwnerLoad]:
    """Started counts and latest starts of ``owners`` for ``model``, in two grouped queries."""
    mine = (Job.model == model, _owner_in(owners))
    started = dict(
        session.execute(
            select(Job.owner, func.count())
            .where(*mine, Job.status == JobStatus.STARTED.value)
            .group_by(Job.owner)
        ).all()
    )
    last = dict(
        session.execute(
            select(Job.owner, func.max(Job.started_at))
            .where(*mine, Job.started_at.is_not(None))
            .group_by(Job.owner)
        ).all()
    )
    return {o: OwnerLoad(started.get(o, 0), last.get(o)) for o in owners}


def _claimable_queued(model: str, max_attempts: int | None):
    cond = [Job.model == model, Job.status == JobStatus.QUEUED.value]
    if max_attempts is not None:
        cond.append(Job.attempts < max_attempts)
    return cond


def next_fair_job(session: Session, job_id: str, max_attempts: int | None = None) -> str:
    """The job a message for ``job_id`` should claim: ``job_id`` itself, unless it is queued and
    the fair order puts another queued job of its model first.

    That is the oldest queued job of the owner the order prefers, when that owner is another
    one; within the message's own owner, the message's job runs (messages keep their order),
    unless an older job of the owner was published again after it (its turn went to another
    owner, and its new message is behind): then that one runs, so an owner's jobs keep theirs.
    """
    row = session.execute(
        select(Job.status, Job.model, Job.owner, Job.published_at).where(Job.id == job_id)
    ).first()
    if row is None or row.status != JobStatus.QUEUED.value:
        return job_id  # a duplicate, or a stale started job to take over: claim as before
    oldest = dict(
        session.execute(
            select(Job.owner, func.min(Job.id))
            .where(*_claimable_queued(row.model, max_attempts))
            .group_by(Job.owner)
        ).all()
    )
    owner = row.owner
    if len(oldest) > 1:
        loads = _loads(session, row.model, list(oldest))
        own = (*loads[owner].key(), "") if owner in loads else None  # ties: the message's owner
        owner = min(oldest, key=lambda o: own if o == row.owner else (*loads[o].key(), oldest[o]))
    first = oldest.get(owner, job_id)
    if owner != row.owner or first == job_id:
        return first
    published = session.execute(select(Job.published_at).where(Job.id == first)).scalar()
    behind = published is not None and (row.published_at is None or published > row.published_at)
    return first if behind else job_id


def queue_positions(
    session: Session, model: str, max_attempts: int | None = None
) -> dict[str, int]:
    """Each queued job of ``model`` -> how many queued jobs the fair order runs before it."""
    rows = session.execute(
        select(Job.id, Job.owner).where(*_claimable_queued(model, max_attempts)).order_by(Job.id)
    ).all()
    lines: dict[str | None, list[str]] = {}
    for job_id, owner in rows:
        lines.setdefault(owner, []).append(job_id)
    if not lines:
        return {}
    loads = _loads(session, model, list(lines))
    return _play(lines, loads)


def _play(lines: dict[str | None, list[str]], loads: dict[str | None, OwnerLoad]) -> dict:
    """Replay the fair order: take the first owner's oldest job, count it as started by its
    owner (and as its latest start), and go on until every line is empty."""
    heap = []
    for n, (owner, ids) in enumerate(lines.items()):
        started, last = loads[owner].key()
        heap.append((started, last, 0, ids[0], n, owner))
    heapq.heapify(heap)
    positions: dict[str, int] = {}
    taken = dict.fromkeys(lines, 0)
    later = dt.datetime.max
    while heap:
        started, _last, _turn, job_id, n, owner = heapq.heappop(heap)
        positions[job_id] = len(positions)
        taken[owner] += 1
        rest = lines[owner]
        if taken[owner] < len(rest):  # its next job, after the owners served less recently
            heapq.heappush(heap, (started + 1, later, len(positions), rest[taken[owner]], n, owner))
    return positions
