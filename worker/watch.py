"""Watching one running job: a cancel asked for while the engine runs, and the job's memory.

**Cancel.** ``CancelWatch`` is the check installed in the engine (``worker.engine.stopping``):
called at every layer, it looks at the job's row at most every ``CANCEL_LOOK_SECONDS`` and raises
``CanceledWhileRunning`` once a cancel was asked for, so the engine stops within about a second
and its tensors are freed as the exception unwinds the pass.

**Memory.** ``memory_guard`` caps the job's allocations with the kernel's ``RLIMIT_DATA`` (the
process's writable private memory, which is where malloc, Python and torch's CPU allocator put
every tensor): set to what the process holds now plus the guard for the job, and restored after
it. An allocation past it fails at once (``MemoryError`` or torch's "can't allocate memory"),
in the job, and the job fails with ``resource_exhausted``; the process keeps its model and
serves the next job. Chosen over a child process per job (which would load or share the model
for every job, and lose the warm caches) and over polling the resident set (which misses one
large allocation and lets the kernel's OOM killer take the whole worker, whose job would then
be claimed again). CUDA memory is outside it: torch raises ``OutOfMemoryError`` there, which
is classified the same way.
"""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

CANCEL_LOOK_SECONDS = 0.5


class CanceledWhileRunning(Exception):  # noqa: N818 - a stop, not a failure
    """Raised inside the engine when the job's cancel was asked for."""


class CancelWatch:
    """A stop check that asks ``is_canceled()`` (a database look) at most every half second."""

    def __init__(self, is_canceled, every: float = CANCEL_LOOK_SECONDS):
        self.is_canceled, self.every = is_canceled, every
        self.next_look = time.monotonic() + every

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + self.every
        try:
            canceled = self.is_canceled()
        except Exception as error:  # the database is away: look again at the next boundary
            log.debug("could not look for a cancel request: %s", error)
            return
        if canceled:
            raise CanceledWhileRunning("the job was canceled while it ran")


def data_bytes() -> int:
    """The process's data segment and writable private mappings now (``VmData``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def memory_guard(job_bytes: int | None):
    """Cap allocations in the body at what the process holds now plus ``job_bytes``."""
    if not job_bytes or not hasattr(resource, "RLIMIT_DATA"):
        yield
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        cap = data_bytes() + job_bytes
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (OSError, ValueError) as error:
        log.warning("no memory guard for this job: %s", error)
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def is_exhaustion(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (the guard, or the device's memory)."""
    if isinstance(error, MemoryError):
        return True
    name = type(error).__name__
    text = str(error)
    return name == "OutOfMemoryError" or (
        isinstance(error, RuntimeError)
        and (
            "can't allocate memory" in text
            or "out of memory" in text.lower()
            or "bad_alloc" in text  # a C++ allocation in torch, refused by the guard
        )
    )
