"""``actq.run_job(job_id)``: claim the job, run the engine, store the outcome. Nothing else.

The logic is in plain functions (``execute_job`` and its helpers) that tests call without Celery;
the Celery task is a thin wrapper that supplies this process's database sessions and model.

What happens to a job, and why it is safe:

* **Claim** (``models.store.claim_job``): ``queued -> started``, attempts + 1, worker name, start
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
* **Retries**: only database connection errors make the task retry. An error the engine raises
  for the request (an ``ActqError``) fails the job at once; an unexpected exception fails it with
  ``internal_error`` and the traceback stored on the job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models import recovery, store
from models.db import make_engine, make_sessionmaker
from models.errors import ActqError
from models.jobs import JOB_DONE_CHANNEL, TASK_NAME, JobStatus
from models.runs import run_losses
from models.settings import Settings
from models.wirejson import dumps

log = logging.getLogger(__name__)

DB_CONNECTION_ERRORS = (OperationalError, InterfaceError, DisconnectionError)
STORE_PATIENCE_SECONDS = 600.0  # how long to retry storing an outcome (the lease, by default)
DEBUG_DELAY_TAG = "debug-delay"  # ``debug-delay=SECONDS``, honoured with ACTQ_DEBUG_DELAYS=1

Runner = Callable[[str, Any, Any], dict]


class SoftTimeLimit(Exception):  # noqa: N818 - named after Celery's SoftTimeLimitExceeded
    """Raised inside the engine stage when the job's soft time limit passes."""


@dataclass(frozen=True)
class JobLimits:
    """What bounds one run of a job (from ``Settings``; tests pass their own)."""

    lease_seconds: float = 600.0
    heartbeat_seconds: float = 30.0
    max_attempts: int | None = None
    soft_time_limit: float | None = None
    store_patience: float = STORE_PATIENCE_SECONDS
    debug_delays: bool = False  # ACTQ_DEBUG_DELAYS: honour ``debug-delay=SECONDS`` tags

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        return cls(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_interval(),
            max_attempts=settings.max_attempts,
            soft_time_limit=settings.soft_time_limit(),
            store_patience=settings.lease_seconds,
            debug_delays=settings.debug_delays,
        )

    def delay_for(self, tags: list[str]) -> float:
        """Seconds a job with these tags sleeps in its engine stage (0 unless the knob is on)."""
        if not self.debug_delays:
            return 0.0
        for tag in tags or []:
            name, _, value = tag.partition("=")
            if name == DEBUG_DELAY_TAG:
                try:
                    return max(0.0, float(value))
                except ValueError:
                    return 0.0
        return 0.0


@dataclass(frozen=True)
class Claimed:
    attempt: int
    endpoint: str
    model: str
    request: Any
    tags: list[str]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(
    sessions: sessionmaker[Session],
    job_id: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
) -> Claimed | None:
    """Claim the job; returns what the run needs, or None."""
    with sessions.begin() as session:
        attempt = store.claim_job(session, job_id, worker, lease_seconds, max_attempts=max_attempts)
        if attempt is None:
            return None
        job = store.get_job(session, job_id)
        return Claimed(attempt, job.endpoint, job.model, job.request, list(job.tags or []))


@contextmanager
def heartbeat(sessions: sessionmaker[Session], job_id: str, attempt: int, interval: float):
    """Refresh the job's heartbeat in a background thread while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with sessions.begin() as session:
                    if not store.beat(session, job_id, attempt):
                        return  # no longer ours (finished elsewhere, canceled)
            except Exception as error:  # a missed beat is not fatal
                log.warning("Job %s: heartbeat failed: %s", job_id, error)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def error_record(error: BaseException) -> dict[str, Any]:
    """The error as stored on the job: the user's view plus, for bugs, the traceback."""
    if isinstance(error, SoftTimeLimit):
        return recovery.timeout_error(error.args[0] if error.args else None, hard=False)
    if isinstance(error, ActqError):
        return {
            "type": error.type,
            "message": error.message,
            "path": error.path,
            "status": error.status,
        }
    return {
        "type": "internal_error",
        "message": f"the engine failed: {type(error).__name__}: {error}",
        "path": None,
        "status": 500,
        "traceback": "".join(traceback.format_exception(error)),
    }


@contextmanager
def soft_time_limit(seconds: float | None):
    """Raise ``SoftTimeLimit`` in the body after ``seconds`` (main thread only; else no limit)."""
    usable = seconds and hasattr(signal, "setitimer")
    if not usable or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise SoftTimeLimit(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_engine(runner: Runner, endpoint: str, request: Any, model: Any, limit: float | None = None):
    """(response text, losses, engine seconds) or (error record, None, seconds)."""
    start = time.perf_counter()
    try:
        with soft_time_limit(limit):
            response = runner(endpoint, request, model)
        text = dumps(response)
        return text, run_losses(endpoint, response), time.perf_counter() - start
    except Exception as error:
        log.info("Engine refused or failed: %s", error)
        return error_record(error), None, time.perf_counter() - start


def with_db_retry(fn: Callable[[], Any], patience: float = STORE_PATIENCE_SECONDS) -> Any:
    """Call ``fn`` (one transaction), retrying connection errors with backoff for ``patience``s."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn()
        except DB_CONNECTION_ERRORS as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Database unavailable (%s); retrying in %.1fs", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def store_outcome(
    sessions,
    job_id: str,
    attempt: int,
    outcome,
    losses,
    seconds: float,
    patience: float = STORE_PATIENCE_SECONDS,
) -> str:
    """Write the outcome in one transaction; returns the job's new status, or 'superseded'."""

    def write() -> str:
        with sessions.begin() as session:
            if losses is not None:
                ok = store.finish_job(session, job_id, attempt, outcome, losses, seconds)
                return "finished" if ok else "superseded"
            ok = store.fail_job(session, job_id, attempt, outcome)
            return "failed" if ok else "superseded"

    return with_db_retry(write, patience)


def stop_if_canceled(sessions, job_id: str, attempt: int, patience: float) -> str | None:
    """At a stage boundary: 'canceled' (or 'superseded') if a cancel was asked for, else None."""
    try:
        with sessions.begin() as session:
            if not recovery.cancel_requested(session, job_id, attempt):
                return None
    except DB_CONNECTION_ERRORS as error:  # cannot tell now; the next boundary looks again
        log.warning("Job %s: could not look for a cancel request: %s", job_id, error)
        return None

    def cancel() -> str:
        with sessions.begin() as session:
            return "canceled" if recovery.cancel_held(session, job_id, attempt) else "superseded"

    status = with_db_retry(cancel, patience)
    log.info("Job %s: %s at a stage boundary", job_id, status)
    return status


def execute_job(
    sessions: sessionmaker[Session],
    job_id: str,
    *,
    model: Callable[[], Any],
    runner: Runner | None = None,
    worker: str | None = None,
    limits: JobLimits | None = None,
    lease_seconds: float | None = None,
    heartbeat_seconds: float | None = None,
) -> str | None:
    """Run one job end to end; returns its final status, or None if it was not claimable.

    ``model`` returns the loaded model (called only after a successful claim, so a duplicate
    message never loads anything); ``runner`` defaults to ``worker.engine.run``. ``limits``
    bounds the run; ``lease_seconds`` and ``heartbeat_seconds`` override two of them.
    """
    worker = worker or worker_name()
    overrides = {"lease_seconds": lease_seconds, "heartbeat_seconds": heartbeat_seconds}
    limits = replace(limits or JobLimits(), **{k: v for k, v in overrides.items() if v})
    job = claim(sessions, job_id, worker, limits.lease_seconds, limits.max_attempts)
    if job is None:
        log.info("Job %s: not claimable (duplicate message or already done)", job_id)
        return None
    log.info("Job %s: claimed by %s (attempt %d)", job_id, worker, job.attempt)
    with heartbeat(sessions, job_id, job.attempt, limits.heartbeat_seconds):
        stopped = stop_if_canceled(sessions, job_id, job.attempt, limits.store_patience)
        if stopped:
            return stopped
        delay = limits.delay_for(job.tags)
        runner = _delayed(runner, delay) if delay else runner
        outcome, losses, seconds = _compute(
            job.endpoint, job.request, job.model, model, runner, limits.soft_time_limit
        )
        stopped = stop_if_canceled(sessions, job_id, job.attempt, limits.store_patience)
        if stopped:
            return stopped
        status = store_outcome(
            sessions, job_id, job.attempt, outcome, losses, seconds, limits.store_patience
        )
    log.info(
        "Job %s: %s in %.3fs of engine time (attempt %d)", job_id, status, seconds, job.attempt
    )
    return status


def _delayed(runner: Runner | None, seconds: float) -> Runner:
    """The runner after a pause (``ACTQ_DEBUG_DELAYS``: rehearsing a slow job)."""

    def run(endpoint: str, request: Any, model: Any) -> dict:
        time.sleep(seconds)
        if runner is None:
            from worker.engine import run as engine_run

            return engine_run(endpoint, request, model)
        return runner(endpoint, request, model)

    return run


def _compute(endpoint, request, model_name, model, runner, limit: float | None = None):
    try:
        loaded = model()
    except Exception as error:
        log.exception("model could not be loaded")
        record = error_record(error)
        record.update(type="model_unavailable", status=503)
        return record, None, 0.0
    served = getattr(loaded, "name", model_name)
    if served != model_name:
        message = f"this worker serves {served!r}, not {model_name!r}"
        return (
            {"type": "internal_error", "message": message, "path": None, "status": 500},
            None,
            0.0,
        )
    if runner is None:
        from worker.engine import run as runner
    return run_engine(runner, endpoint, request, loaded, limit)


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
                self._model = load_model(self.settings.model, device=self.settings.device)
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


FINAL_STATUSES = frozenset(s.value for s in JobStatus if s.is_final)


def run_job(task, job_id: str) -> str | None:
    """The body of ``actq.run_job``: retries only when the database connection fails."""
    settings = _state.settings
    try:
        status = execute_job(
            _state.sessions(),
            job_id,
            model=_state.model,
            worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
            limits=JobLimits.from_settings(settings),
        )
        if status in FINAL_STATUSES:
            _state.announce_done(job_id)
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
    return failed


def register(app) -> None:
    """Register ``actq.run_job`` on a Celery app."""
    app.task(name=TASK_NAME, bind=True, ignore_result=True, acks_late=True)(run_job)
