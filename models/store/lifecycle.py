"""The job lifecycle, written out once: statuses, allowed transitions, task and queue names.

A job is born ``queued`` when the API has validated and stored it, becomes ``started`` when a
worker claims it, and ends ``finished`` (the response is stored) or ``failed`` (a structured error
is stored). ``canceled`` ends a job that nobody should run any more. A ``started`` job whose worker
died (its heartbeat went stale) may be claimed again, or put back in the queue by the reaper,
which are the ways back; after ``ACTQ_MAX_ATTEMPTS`` claims the reaper fails it instead
(``models.store.recovery``)::

    queued --claim--> started --finish--> finished
       |                 |  \\--fail (error, timeout, worker lost)--> failed
       |                 |--reclaim (stale heartbeat)--> started
       |                 \\--requeue (reaper, stale heartbeat)--> queued
       \\--cancel--> canceled  (started --cancel at a stage boundary--> canceled too)

The web process and the worker both use these names; neither imports the other.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED})
PENDING_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.STARTED})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTED, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.STARTED: frozenset(
        {
            JobStatus.STARTED,
            JobStatus.FINISHED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.FINISHED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_transition(old: JobStatus | str, new: JobStatus | str) -> bool:
    """True when a job in status ``old`` may move to ``new``."""
    return JobStatus(new) in ALLOWED_TRANSITIONS[JobStatus(old)]


# The inference routes of TDB that become jobs; ``model_info`` takes no request body.
INFERENCE_ENDPOINTS: tuple[str, ...] = (
    "derived_scalars",
    "derived_attention_scalars",
    "multiple_top_k_derived_scalars",
    "batched",
    "batched_tdb",
)
ENDPOINTS: tuple[str, ...] = (*INFERENCE_ENDPOINTS, "model_info")

TASK_NAME = "actq.run_job"
# A worker publishes a job's id here (Redis pub/sub) once its outcome is stored, so that requests
# waiting for it answer at once; waiting never depends on it (they also look every half second).
JOB_DONE_CHANNEL = "actq.job-done"
QUEUE_PREFIX = "actq."


def queue_name(model_name: str) -> str:
    """The Celery queue that the workers of one model listen on."""
    return f"{QUEUE_PREFIX}{model_name}"
