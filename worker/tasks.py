"""``actq.run_job(job_id)``: claim the job, run the engine, store the outcome. Nothing else.

The logic is in plain functions (``worker.cobatch.execute_jobs``, which runs waiting jobs
together, over ``worker.claims``' claim and ``worker.execution``'s run; the bounds in
``worker.limits``) that tests call without Celery;
the Celery task is a thin wrapper that supplies this process's database sessions and model.

What happens to a job, and why it is safe:

* **Turn** (``models.store.fairness``): a message is a turn of its model's queue; the job claimed
  is the one the fair order between owners puts first (the message's own job, or another one,
  and then the message's job is published again).
* **Claim** (``models.store.jobs.claim_job``): ``queued -> started``, attempts + 1, worker name, start
  time and heartbeat, in one conditional UPDATE. A redelivered message for a job that is finished,
  failed, canceled, or started by a live worker claims nothing and is acknowledged as a no-op.
* **Heartbeat**: while the engine runs and the outcome is stored, a thread refreshes
  ``heartbeat_at`` every ``heartbeat_interval`` seconds. A ``started`` job whose heartbeat is
  older than ``ACTQ_LEASE_SECONDS`` belongs to a dead worker: the reaper (``worker.reaper``) puts
  it back in the queue, and the claim step also takes it over when the broker delivers its message
  again (Redis does so after the visibility timeout, which follows the lease). After
  ``ACTQ_MAX_ATTEMPTS`` claims a job is not claimed again; the reaper fails it.
* **Stage boundaries**: before the engine runs and before the outcome is stored the task looks
  whether someone asked to cancel the job (``POST /v1/jobs/ID/cancel``); if so it is ``canceled``.
* **Time limits**: the engine stage runs under a soft limit (``ACTQ_JOB_SOFT_TIME_LIMIT``, a
  SIGALRM that interrupts it; the job fails with ``timeout``); Celery's hard limit
  (``ACTQ_JOB_TIME_LIMIT``, prefork pool) kills a process that ignores it, and the worker's main
  process then fails the job with ``timeout`` (``worker.celery_app``).
* **Outcome**: the response text (TDB-exact JSON, compressed) with ``finished``, or a structured
  error with ``failed``, in one transaction, and only if this worker still holds the attempt (so a
  job is stored exactly once even when two workers ran it). Connection errors while storing are
  retried for up to the lease, so a database restart loses no finished result.
* **Co-batching** (``ACTQ_BATCH_JOBS``, ``worker.cobatch``): the job may take waiting jobs of
  its model along, each claimed as above, run with shared passes and stored as alone.
* **Retries**: only database connection errors make the task retry. An error the engine raises
  for the request (an ``ActqError``) fails the job at once; an unexpected exception fails it with
  ``internal_error`` and the traceback stored on the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings
from models.store import recovery
from models.store.db import make_engine, make_sessionmaker
from models.store.lifecycle import JOB_DONE_CHANNEL, TASK_NAME, queue_name
from worker.cobatch import execute_jobs
from worker.execution import DB_CONNECTION_ERRORS, with_db_retry
from worker.limits import JobLimits

log = logging.getLogger(__name__)


# --- per-process state and the Celery task --------------------------------------------------


class _ProcessState:
    """This worker process's settings, database sessions and model, each made on first use."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._engine = None
        self._model = None
        self._redis = None
        self._lock = threading.Lock()

    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                self._engine = make_engine(self.settings.database())
                self._sessions = make_sessionmaker(self._engine)
            return self._sessions

    def model(self):
        with self._lock:
            if self._model is None:
                import torch

                from worker.engine import load_model

                # a process forked after torch ran in its parent starts with one thread
                torch.set_num_threads(self.settings.torch_threads or os.cpu_count() or 1)
                log.info(
                    "Loading model %s (%d torch threads)",
                    self.settings.model,
                    torch.get_num_threads(),
                )
                self._model = load_model(
                    self.settings.model,
                    device=self.settings.device,
                    dtype=self.settings.dtype,
                    mlp_autoencoder=self.settings.mlp_autoencoder,
                    attention_autoencoder=self.settings.attention_autoencoder,
                )
            return self._model

    def announce_done(self, job_id: str) -> None:
        """Tell waiting API requests (Redis pub/sub) that the job's outcome is stored."""
        url = self.settings.broker()
        if not url.startswith(("redis://", "rediss://")):
            return
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(url)
            self._redis.publish(JOB_DONE_CHANNEL, job_id)
        except redis.RedisError as error:  # waiters look again within half a second anyway
            log.debug("Job %s: could not announce it done: %s", job_id, error)

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose(close=False)
            self._engine = None
            self._sessions = None


_state = _ProcessState()


def configure(settings: Settings) -> None:
    _state.settings = settings


def dispose_connections() -> None:
    _state.dispose()


def process_sessions() -> sessionmaker[Session]:
    """This process's database sessions (the reaper in a worker's main process uses them)."""
    return _state.sessions()


def run_job(task, job_id: str) -> str | None:
    """The body of ``actq.run_job``: retries only when the database connection fails."""
    settings = _state.settings
    try:
        status = execute_jobs(
            _state.sessions(),
            job_id,
            model=_state.model,
            batch_jobs=settings.batch_jobs,
            announce=_state.announce_done,
            worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
            limits=JobLimits.from_settings(settings),
            publish=lambda other, model: task.app.send_task(
                TASK_NAME, args=[other], queue=queue_name(model)
            ),
        )
        return status
    except (*DB_CONNECTION_ERRORS, DBAPIError) as error:
        if not isinstance(error, DB_CONNECTION_ERRORS) and not error.connection_invalidated:
            raise
        countdown = min(60, 2**task.request.retries)
        log.warning("Job %s: database unavailable, retrying in %ss", job_id, countdown)
        raise task.retry(exc=error, countdown=countdown, max_retries=20) from error


def fail_on_hard_timeout(job_id: str, node: str, seconds: float | None) -> bool:
    """In the worker's main process, after Celery killed the process running ``job_id``."""

    def write() -> bool:
        with _state.sessions().begin() as session:
            return recovery.fail_timed_out(session, job_id, node, seconds)

    failed = with_db_retry(write, _state.settings.lease_seconds)
    if failed:  # Celery may report one kill twice; the second finds the job already failed
        log.error("Job %s: killed at the hard time limit (%ss); failed", job_id, seconds)
    else:  # the message's turn may have run another job (models.store.fairness): find it
        threading.Thread(
            target=_fail_orphans, args=(node, seconds), name="hard-limit", daemon=True
        ).start()
    return failed


def _fail_orphans(node: str, seconds: float | None, patience: float = 15.0) -> None:
    """Fail with ``timeout`` the started jobs of ``node`` whose pool process is gone (Celery
    calls the hard-limit handler before it kills the process, so look for a while)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        with _state.sessions().begin() as session:
            held = recovery.held_by_node(session, node)
            gone = [(i, w) for i, w in held if not _process_alive(w.rsplit(":", 1)[-1])]
            for job_id, holder in gone:
                if recovery.fail_timed_out(session, job_id, node, seconds, holder=holder):
                    log.error(
                        "Job %s: killed at the hard time limit (%ss); failed", job_id, seconds
                    )
        if gone:
            return
        time.sleep(0.5)


def _process_alive(pid: str) -> bool:
    """True when the process runs on this machine (a zombie, killed but not reaped, is gone)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def register(app) -> None:
    """Register ``actq.run_job`` on a Celery app."""
    app.task(name=TASK_NAME, bind=True, ignore_result=True, acks_late=True)(run_job)
