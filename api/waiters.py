"""Waiting requests (``?wait=``, the TDB-compatible routes) are capped, and hold no connection.

A waiting request occupies a server thread for up to a minute (ten for TDB's routes); 50 of
them once took every database connection of the embedded service and every thread of gunicorn,
so other clients got 503s or waited. Now each API process lets at most ``ACTQ_MAX_WAITERS``
requests wait at once (beyond that: 503 with ``Retry-After``, and the client polls instead),
``actq api`` gives gunicorn that many threads on top of its own, and a waiter gives back its
request's database connection before it waits (each look at the job takes one for a moment).
Without Redis a waiter polls the database; the more waiters, the less often each one looks.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from flask import current_app, g
from werkzeug.exceptions import ServiceUnavailable

WAITERS_RETRY_AFTER = 2  # seconds a refused waiter is asked to wait before it asks again

_lock = threading.Lock()


class _Waiters:
    def __init__(self, limit: int):
        self.limit, self.count = limit, 0


def _waiters() -> _Waiters:
    app = current_app._get_current_object()
    with _lock:
        found = app.extensions.get("actq.waiters")
        if found is None:
            found = app.extensions["actq.waiters"] = _Waiters(
                app.config["ACTQ_SETTINGS"].max_waiters
            )
        return found


def waiting_now() -> int:
    return _waiters().count


@contextmanager
def waiter_slot():
    """Hold one of the process's waiter slots for the body, or answer 503 + Retry-After."""
    waiters = _waiters()
    with _lock:
        if waiters.count >= waiters.limit:
            refused = ServiceUnavailable(
                f"{waiters.limit} requests are already waiting here (ACTQ_MAX_WAITERS); "
                "poll the job's URL instead, or retry shortly"
            )
            refused.retry_after = WAITERS_RETRY_AFTER
            raise refused
        waiters.count += 1
    try:
        _release_request_connection()
        yield
    finally:
        with _lock:
            waiters.count -= 1


def _release_request_connection() -> None:
    """End the request session's transaction, which returns its connection to the pool."""
    session = g.get("actq_session")
    if session is not None:
        session.rollback()
