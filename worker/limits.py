"""What bounds one run of a job: the lease and heartbeat, attempts, the soft time limit, and the
debug delay used to rehearse a slow job. Plain values from ``Settings``; tests pass their own."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from models.settings import Settings

STORE_PATIENCE_SECONDS = 600.0  # how long to retry storing an outcome (the lease, by default)
DEBUG_DELAY_TAG = "debug-delay"  # ``debug-delay=SECONDS``, honoured with ACTQ_DEBUG_DELAYS=1


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
    memory_guard_bytes: int | None = None  # a job's allocations beyond the loaded model

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        return cls(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_interval(),
            max_attempts=settings.max_attempts,
            soft_time_limit=settings.soft_time_limit(),
            store_patience=settings.lease_seconds,
            debug_delays=settings.debug_delays,
            memory_guard_bytes=settings.job_memory_guard(),
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
