"""Rows whose stored data no longer reads: found, so that lists skip and report them.

A JSON column that does not parse reads as a ``CorruptValue`` (``models.store.tables``); a run's
canonical ablations are text, checked here. A list shows every other row and names the skipped
ones with the reason, so one damaged row never fails an owner's whole history.
"""

from __future__ import annotations

import json

from models.errors import ActqError
from models.store.tables import CorruptValue, Job, Run


class DamagedRowError(ActqError):
    """A stored row that no longer reads (a response that does not inflate or parse): the
    server's data is at fault, not the request, so a 500 that says which row."""

    status = 500
    type = "damaged_row"


JOB_JSON = ("request", "error", "warnings", "tags", "autoencoders")
RUN_JSON = ("autoencoders", "target_tokens", "distractor_tokens", "trace", "tags")


def _json_columns(row, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = getattr(row, name)
        if isinstance(value, CorruptValue):
            return f"{name}: {value.reason}"
    return None


def job_corruption(job: Job) -> str | None:
    """Why the job's row cannot be shown, or None."""
    return _json_columns(job, JOB_JSON)


def run_corruption(run: Run) -> str | None:
    """Why the run's row (or its job's) cannot be shown, or None."""
    found = _json_columns(run, RUN_JSON)
    if found is None:
        try:
            json.loads(run.ablations or "[]")
        except ValueError as error:
            found = f"ablations: stored JSON does not parse ({error})"
    if found is None and (in_job := job_corruption(run.job)):
        found = f"its job's {in_job}"
    return found


def split_readable(rows: list, corruption) -> tuple[list, list[tuple]]:
    """(the rows that read, [(row, reason)] of those that do not)."""
    good, bad = [], []
    for row in rows:
        reason = corruption(row)
        if reason is None:
            good.append(row)
        else:
            bad.append((row, reason))
    return good, bad
