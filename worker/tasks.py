"""``actq.run_job(job_id)``: claim the job, run the engine, store the outcome. Nothing else.

The logic is in plain functions (``execute_job`` and its helpers) that tests call without Celery;
the Celery task is a thin wrapper that supplies this process's database sessions and model.

What happens to a job, and why it is safe:

* **Claim** (``models.store.claim_job``): ``queued -> started``, attempts + 1, worker name, start
  time and heartbeat, in one conditional UPDATE. A redelivered message for a job that is finished,
  failed, canceled, or started by a live worker claims nothing and is acknowledged as a no-op.
* **Heartbeat**: while the engine runs, a thread refreshes ``heartbeat_at`` every
  ``heartbeat_interval`` seconds. A ``started`` job whose heartbeat is older than
  ``ACTQ_LEASE_SECONDS`` belongs to a dead worker, and the claim step takes it over when the broker
  delivers its message again (Redis does so after the visibility timeout, because the dead worker
  never acknowledged it). A reaper that requeues such jobs when no message is left is the next
  step (it only needs ``heartbeat_at``).
* **Outcome**: the response text (TDB-exact JSON, compressed) with ``finished``, or a structured
  error with ``failed``, in one transaction, and only if this worker still holds the attempt.
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
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models import store
from models.db import make_engine, make_sessionmaker
from models.errors import ActqError
from models.jobs import TASK_NAME
from models.runs import run_losses
from models.settings import Settings
from models.wirejson import dumps

log = logging.getLogger(__name__)

DB_CONNECTION_ERRORS = (OperationalError, InterfaceError, DisconnectionError)
STORE_ATTEMPTS = 8  # tries to store an outcome before giving the job up to a redelivery

Runner = Callable[[str, Any, Any], dict]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(sessions: sessionmaker[Session], job_id: str, worker: str, lease_seconds: float):
    """Claim the job; returns (attempt, endpoint, model name, request) or None."""
    with sessions.begin() as session:
        attempt = store.claim_job(session, job_id, worker, lease_seconds)
        if attempt is None:
            return None
        job = store.get_job(session, job_id)
        return attempt, job.endpoint, job.model, job.request


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


def run_engine(runner: Runner, endpoint: str, request: Any, model: Any):
    """(response text, losses, engine seconds) or (error record, None, seconds)."""
    start = time.perf_counter()
    try:
        response = runner(endpoint, request, model)
        text = dumps(response)
        return text, run_losses(endpoint, response), time.perf_counter() - start
    except Exception as error:
        log.info("Engine refused or failed: %s", error)
        return error_record(error), None, time.perf_counter() - start


def with_db_retry(fn: Callable[[], Any], attempts: int = STORE_ATTEMPTS) -> Any:
    """Call ``fn`` (one transaction), retrying connection errors with backoff."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DB_CONNECTION_ERRORS as error:
            if attempt == attempts:
                raise
            log.warning("Database unavailable (%s); retrying in %.1fs", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    return None


def store_outcome(sessions, job_id: str, attempt: int, outcome, losses, seconds: float) -> str:
    """Write the outcome in one transaction; returns the job's new status, or 'superseded'."""

    def write() -> str:
        with sessions.begin() as session:
            if losses is not None:
                ok = store.finish_job(session, job_id, attempt, outcome, losses, seconds)
                return "finished" if ok else "superseded"
            ok = store.fail_job(session, job_id, attempt, outcome)
            return "failed" if ok else "superseded"

    return with_db_retry(write)


def execute_job(
    sessions: sessionmaker[Session],
    job_id: str,
    *,
    model: Callable[[], Any],
    runner: Runner | None = None,
    worker: str | None = None,
    lease_seconds: float = 600.0,
    heartbeat_seconds: float = 30.0,
) -> str | None:
    """Run one job end to end; returns its final status, or None if it was not claimable.

    ``model`` returns the loaded model (called only after a successful claim, so a duplicate
    message never loads anything); ``runner`` defaults to ``worker.engine.run``.
    """
    worker = worker or worker_name()
    claimed = claim(sessions, job_id, worker, lease_seconds)
    if claimed is None:
        log.info("Job %s: not claimable (duplicate message or already done)", job_id)
        return None
    attempt, endpoint, model_name, request = claimed
    log.info("Job %s: claimed by %s (attempt %d)", job_id, worker, attempt)
    with heartbeat(sessions, job_id, attempt, heartbeat_seconds):
        outcome, losses, seconds = _compute(endpoint, request, model_name, model, runner)
    status = store_outcome(sessions, job_id, attempt, outcome, losses, seconds)
    log.info("Job %s: %s in %.3fs of engine time", job_id, status, seconds)
    return status


def _compute(endpoint, request, model_name, model, runner):
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
    return run_engine(runner, endpoint, request, loaded)


# --- per-process state and the Celery task --------------------------------------------------


class _ProcessState:
    """This worker process's settings, database sessions and model, each made on first use."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._engine = None
        self._model = None
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
                from worker.engine import load_model

                log.info("Loading model %s", self.settings.model)
                self._model = load_model(self.settings.model, device=self.settings.device)
            return self._model

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


def run_job(task, job_id: str) -> str | None:
    """The body of ``actq.run_job``: retries only when the database connection fails."""
    settings = _state.settings
    try:
        return execute_job(
            _state.sessions(),
            job_id,
            model=_state.model,
            worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_interval(),
        )
    except (*DB_CONNECTION_ERRORS, DBAPIError) as error:
        if not isinstance(error, DB_CONNECTION_ERRORS) and not error.connection_invalidated:
            raise
        countdown = min(60, 2**task.request.retries)
        log.warning("Job %s: database unavailable, retrying in %ss", job_id, countdown)
        raise task.retry(exc=error, countdown=countdown, max_retries=20) from error


def register(app) -> None:
    """Register ``actq.run_job`` on a Celery app."""
    app.task(name=TASK_NAME, bind=True, ignore_result=True, acks_late=True)(run_job)
