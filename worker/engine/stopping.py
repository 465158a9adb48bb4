"""Stopping a running engine between its steps: the one hook the worker has into a computation.

A canceled job (or one over its memory, or its time) must stop within a second or two, not
after its passes end. The engine cannot look at the database (it is a library), so the worker
installs a check with ``stop_when(check)`` for the duration of one job, and the engine calls
``check_stop()`` at its natural boundaries: every hooked activation of every layer, forward and
backward (``Hooks.point``, family-agnostic: every family's forward goes through it), and
between processing specs. ``check`` raises to stop (the worker's own exception types); raising
unwinds the pass, and the tensors it held are freed with its frames.

One job runs in a process at a time (prefork and solo pools), so the check is process-wide,
not thread-local: the backward pass may run its hooks on autograd's threads.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

_check: Callable[[], None] | None = None


def check_stop() -> None:
    """Raise if the installed check says so; nothing when none is installed."""
    if _check is not None:
        _check()


def stopping_enabled() -> bool:
    return _check is not None


def backward_check(grad):
    """A gradient hook that checks for a stop (returns None: the gradient is unchanged)."""
    check_stop()


@contextmanager
def stop_when(check: Callable[[], None]):
    """Install ``check`` for the body (one job); the previous one is restored after."""
    global _check
    previous, _check = _check, check
    try:
        yield
    finally:
        _check = previous
