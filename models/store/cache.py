"""The cache of identical requests: a submission equal to a finished job reuses its result.

Two submissions are identical when their ``request_hash`` is (sha256 of the canonical request
with its endpoint, model and model revision, ``models.store.jobs.request_hash``). The newest finished
job with that hash answers: a new job row is created already ``finished`` (it never passes
through ``queued``), with ``cache_of`` naming the job that computed the result (the original, also
when the answering job was itself a cache hit), a copy of the stored response blob, and the
losses of its runs. The new row has its own id, label and tags, so the submission shows up in the
history like any other. A caller that wants a new computation skips the cache (``?fresh=1``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.store.jobs import create_job, request_hash
from models.store.lifecycle import JobStatus
from models.store.tables import Job, utcnow


def find_cached(session: Session, key: str) -> Job | None:
    """The newest finished job whose request hash is ``key``."""
    query = (
        select(Job)
        .where(Job.request_hash == key, Job.status == JobStatus.FINISHED.value)
        .order_by(Job.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def reuse_result(
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
) -> Job | None:
    """A new ``finished`` job answering from the store, or None when nothing identical finished."""
    key = request_hash(endpoint, request, model, model_revision, autoencoders)
    source = find_cached(session, key)
    if source is None:
        return None
    job = create_job(
        session,
        endpoint=endpoint,
        model=model,
        model_revision=model_revision,
        request=request,
        label=label,
        tags=tags,
        owner=owner,
        autoencoders=autoencoders,
    )
    now = utcnow()
    job.status = JobStatus.FINISHED.value
    job.response = source.response
    job.response_size = source.response_size
    job.started_at = job.finished_at = now
    job.cache_of = source.cache_of or source.id
    losses = {run.index: run.loss for run in source.runs}
    for run in job.runs:
        run.loss = losses.get(run.index)
    return job
