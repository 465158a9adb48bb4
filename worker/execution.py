"""Running one job end to end, without Celery: claim, heartbeat, engine, cancel checks, store.

``execute_job`` is what the Celery task calls with this process's sessions and model; tests call
it directly. The guarantees it keeps are written out in ``worker.tasks``.
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
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.errors import ActqError
from models.store import jobs as store
from models.store import recovery
from models.store.runs import run_losses
from models.wire.encoding import dumps
from worker.claims import Claimed, Publish, claim
from worker.engine.stopping import check_stop, stop_when
from worker.limits import STORE_PATIENCE_SECONDS, JobLimits, SoftTimeLimit, soft_time_limit
from worker.normalization import normalizing
from worker.watch import CancelWatch, is_exhaustion, memory_guard

log = logging.getLogger(__name__)

DB_CONNECTION_ERRORS = (OperationalError, InterfaceError, DisconnectionError)

Runner = Callable[[str, Any, Any], dict]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


FINAL_STATUSES = ("finished", "failed", "canceled")


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
    if is_exhaustion(error):
        return {
            "type": "resource_exhausted",
            "message": "the job ran out of memory (ACTQ_JOB_MEMORY_GUARD_BYTES, or the "
            f"device's memory): {type(error).__name__}: {str(error)[:300]}; ask for less "
            "(fewer sub-requests, a smaller k or fewer scored tokens)",
            "path": None,
            "status": 422,
        }
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


def run_engine(
    runner: Runner,
    endpoint: str,
    request: Any,
    model: Any,
    limit: float | None = None,
    memory: int | None = None,
    stop_check: Callable[[], None] | None = None,
    keep: list | None = None,
):
    """(response text, losses, engine seconds) or (error record, None, seconds).

    The engine runs under the soft time limit, the memory guard (``memory`` bytes beyond what
    the process holds, ``worker.watch``) and ``stop_check`` (called at the engine's boundaries;
    it raises to stop). A failed run's tensors are freed before this returns. ``keep`` gets the
    response's objects, for the caller to free once the job is stored and announced: freeing
    those of a gpt2-small-sized batched pair (a million values) takes 2-3 ms."""
    start = time.perf_counter()
    try:
        with soft_time_limit(limit), memory_guard(memory), stop_when(stop_check or _go_on):
            response = runner(endpoint, request, model)
            if keep is not None:
                keep.append(response)
            text = dumps(response)
        return text, run_losses(endpoint, response), time.perf_counter() - start
    except Exception as error:
        log.info("Engine refused or failed: %s", error)
        record = error_record(error)
    release_memory()  # the traceback that held the pass's tensors is gone with ``error``
    return record, None, time.perf_counter() - start


def _go_on() -> None:
    return None


def release_memory() -> None:
    """Give back what a stopped or failed pass held (Python's cycles, the CUDA cache)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # no torch, or no device: nothing cached
        pass


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
    """Write the outcome in one transaction; returns the job's new status, or 'superseded'.
    The write itself looks for a cancel: asked for since the last look, it wins (``canceled``)."""

    def write() -> str:
        with sessions.begin() as session:
            args = (session, job_id, attempt, outcome, losses, seconds)
            return recovery.store_unless_canceled(*args)

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
    publish: Publish | None = None,
    done: Callable[[str], None] | None = None,
) -> str | None:
    """Run one job end to end; returns its final status, or None if it was not claimable.

    The job run is the one the fair order puts first for a message of ``job_id`` (``claim``);
    ``publish`` sends the message's own job again when that is another one; ``done`` is called
    with the id of the job run once its outcome is stored.

    ``model`` returns the loaded model (called only after a successful claim, so a duplicate
    message never loads anything); ``runner`` defaults to ``worker.engine.run``. ``limits``
    bounds the run; ``lease_seconds`` and ``heartbeat_seconds`` override two of them.
    """
    worker = worker or worker_name()
    limits = effective_limits(limits, lease_seconds, heartbeat_seconds)
    job = claim(sessions, job_id, worker, limits.lease_seconds, limits.max_attempts, publish)
    if job is None:
        log.info("Job %s: not claimable (duplicate message or already done)", job_id)
        return None
    log.info("Job %s: claimed by %s (attempt %d)", job.job_id, worker, job.attempt)
    kept: list = []  # the response's objects, freed once the job is announced
    status = run_claimed(
        sessions, job.job_id, job, model=model, runner=runner, limits=limits, looked=True, keep=kept
    )
    if done is not None and status in FINAL_STATUSES:
        done(job.job_id)
    kept.clear()
    return status


def effective_limits(limits, lease_seconds=None, heartbeat_seconds=None) -> JobLimits:
    overrides = {"lease_seconds": lease_seconds, "heartbeat_seconds": heartbeat_seconds}
    return replace(limits or JobLimits(), **{k: v for k, v in overrides.items() if v})


def run_claimed(
    sessions: sessionmaker[Session],
    job_id: str,
    job: Claimed,
    *,
    model: Callable[[], Any],
    runner: Runner | None = None,
    limits: JobLimits,
    looked: bool = False,
    keep: list | None = None,
) -> str:
    """Run a job this worker holds (``job``, its claim) to its final status.

    ``looked``: the claim was just made, and was the look for a cancel before the engine (a
    job asked to cancel is not claimable: a queued one is canceled at once, a started one is
    not taken over), so no second look. ``keep``: as for ``run_engine``."""
    with heartbeat(sessions, job_id, job.attempt, limits.heartbeat_seconds):
        if not looked:
            stopped = stop_if_canceled(sessions, job_id, job.attempt, limits.store_patience)
            if stopped:
                return stopped
        delay = limits.delay_for(job.tags)
        runner = _delayed(runner, delay) if delay else runner
        watch = CancelWatch(lambda: _cancel_asked(sessions, job_id, job.attempt))
        runner = normalizing(sessions, runner)
        outcome, losses, seconds = _compute(
            job.endpoint, job.request, job.model, model, runner, limits, watch, keep
        )
        # the store is the last stage boundary: it looks for a cancel in its own UPDATE
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
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:  # a slow engine: it stops when asked to
            check_stop()
            time.sleep(min(left, 0.05))
        if runner is None:
            from worker.engine import run as engine_run

            return engine_run(endpoint, request, model)
        return runner(endpoint, request, model)

    return run


def _cancel_asked(sessions, job_id: str, attempt: int) -> bool:
    with sessions() as session:
        return recovery.cancel_requested(session, job_id, attempt)


def _compute(
    endpoint, request, model_name, model, runner, limits: JobLimits, watch=None, keep=None
):
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
    return run_engine(
        runner,
        endpoint,
        request,
        loaded,
        limits.soft_time_limit,
        limits.memory_guard_bytes,
        watch,
        keep,
    )
