"""Run history: find runs by what people compare them by, page through them, edit their labels.

A run is one sub-request of a job (``JOB/N``). Pages are newest first in ``(job_id, index)``
order (job ids sort by creation time), and the cursor is the address of the last run shown, so a
page is a range scan on an index that ends in ``(job_id, index)``: the primary key with no filter,
``ix_runs_model_job_id_index`` for a model, ``ix_runs_prompt_hash_job_id_index`` for a prompt,
``ix_runs_has_ablations_job_id_index`` for with/without ablations, and the key indexes of
``run_ablations`` and ``run_tags`` for "ablating this node" and "tagged X" (the query is then
driven from that table). Every function takes a ``session`` and leaves the transaction to its
caller.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, exists, or_, select, tuple_
from sqlalchemy.orm import Session, aliased, contains_eager, selectinload

from models.errors import NotFoundError, RequestValidationError
from models.store.lifecycle import JobStatus
from models.store.runs import canonical_json, prompt_hash
from models.store.tables import Job, JobTag, Run, RunAblation, RunTag

BASELINE_CANDIDATES = 200  # newest clean runs of the prompt looked at when choosing a baseline


@dataclass
class RunFilter:
    """History filters for runs; every field is optional and they combine with AND."""

    model: str | None = None
    prompt: str | None = None  # exact prompt
    prompt_contains: str | None = None  # substring, case-insensitive
    has_ablations: bool | None = None
    ablates: list[str] = field(default_factory=list)  # run_keys keys, all ablated by the run
    ablations: str | None = None  # canonical ablations JSON: exactly these ablations
    tags: list[str] = field(default_factory=list)  # runs carrying every one of these tags
    label: str | None = None
    status: str | None = None  # of the run's job
    endpoint: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def parse_address(text: str, path: str = "run") -> tuple[str, int]:
    """``JOB/N`` -> (job id, N); a bare job id means its first run."""
    job_id, sep, index = text.strip().partition("/")
    if not job_id:
        raise RequestValidationError("a run is named JOB/N or JOB (meaning JOB/0)", path)
    if not sep or index == "":
        return job_id, 0
    if not (index.isascii() and index.isdigit()) or len(index) > 9:
        raise RequestValidationError(f"run index {index!r} is not a run number (JOB/N)", path)
    return job_id, int(index)


def get_run(session: Session, job_id: str, index: int = 0) -> Run | None:
    return session.get(Run, (job_id, index))


def find_run(session: Session, address: str, path: str = "run") -> Run:
    """The run named ``JOB/N`` (or ``JOB``), or a 404 that says which one is missing."""
    job_id, index = parse_address(address, path)
    run = get_run(session, job_id, index)
    if run is None:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", path=path)
        raise NotFoundError(
            f"job {job_id} has {len(job.runs)} run(s) (0 to {len(job.runs) - 1}); "
            f"there is no run {job_id}/{index}",
            path=path,
        )
    return run


def _escape_like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _driver(f: RunFilter):
    """The table whose index gives the page order: a key table when the filter names a key."""
    if f.ablates:
        return aliased(RunAblation, name="driver"), RunAblation.key, f.ablates[0]
    if f.tags:
        return aliased(RunTag, name="driver"), RunTag.tag, f.tags[0]
    return None, None, None


def _conditions(f: RunFilter) -> list:
    cond: list = []
    for column, value in ((Run.model, f.model), (Run.label, f.label), (Run.ablations, f.ablations)):
        if value is not None:
            cond.append(column == value)
    if f.prompt is not None:
        cond.append(Run.prompt_hash == prompt_hash(f.prompt))
    if f.prompt_contains:
        cond.append(Run.prompt.ilike(_escape_like(f.prompt_contains), escape="\\"))
    if f.has_ablations is not None:
        cond.append(Run.has_ablations.is_(f.has_ablations))
    for key in f.ablates[1:]:
        cond.append(_has_row(RunAblation, RunAblation.key, key))
    for tag in f.tags[1 if not f.ablates else 0 :]:
        cond.append(_has_row(RunTag, RunTag.tag, tag))
    job_cond = [c == v for c, v in ((Job.status, f.status), (Job.endpoint, f.endpoint)) if v]
    if job_cond:  # a probe per run in page order, not a join the planner may turn around
        cond.append(exists().where(Job.id == Run.job_id, *job_cond))
    if f.since is not None:
        cond.append(Run.created_at >= f.since)
    if f.until is not None:
        cond.append(Run.created_at < f.until)
    return cond


def _has_row(table, column, value: str):
    return exists().where(table.job_id == Run.job_id, table.index == Run.index, column == value)


def runs_query(f: RunFilter, before: tuple[str, int] | None = None) -> Select:
    """The history query: runs matching ``f``, newest first (their jobs loaded by id after)."""
    driver, key_column, key = _driver(f)
    order = Run if driver is None else driver
    query = select(Run).options(selectinload(Run.job))
    if driver is not None:
        key_of_driver = getattr(driver, key_column.key)
        query = query.join(
            driver,
            and_(driver.job_id == Run.job_id, driver.index == Run.index, key_of_driver == key),
        )
    query = query.where(*_conditions(f))
    if before is not None:
        job_id, index = before
        query = query.where(tuple_(order.job_id, order.index) < tuple_(job_id, index))
    return query.order_by(order.job_id.desc(), order.index.desc())


def list_runs(
    session: Session, f: RunFilter, limit: int = 50, cursor: str | None = None
) -> tuple[list[Run], str | None]:
    """Runs matching ``f``, newest first, at most ``limit``; and the cursor of the next page."""
    before = parse_address(cursor, "cursor") if cursor else None
    runs = list(session.scalars(runs_query(f, before).limit(limit + 1)).unique())
    if len(runs) > limit:
        return runs[:limit], runs[limit - 1].address
    return runs, None


def _trace_key(run: Run) -> str:
    return canonical_json(run.trace)


def find_baseline(session: Session, run: Run) -> Run | None:
    """The most recent finished run of the same prompt, model and tokens without ablations.

    Among such runs, one of the same endpoint and trace settings is preferred (it compares
    fully); the run itself is never its own baseline.
    """
    query = (
        select(Run)
        .join(Run.job)
        .options(contains_eager(Run.job))
        .where(
            Run.prompt_hash == run.prompt_hash,
            Run.model == run.model,
            Run.has_ablations.is_(False),
            Job.status == JobStatus.FINISHED.value,
            or_(Run.job_id != run.job_id, Run.index != run.index),
        )
        .order_by(Run.job_id.desc(), Run.index.desc())
        .limit(BASELINE_CANDIDATES)
    )
    candidates = [
        other
        for other in session.scalars(query).unique()
        if other.model_revision == run.model_revision
        and other.prompt == run.prompt
        and (other.target_tokens or []) == (run.target_tokens or [])
        and (other.distractor_tokens or []) == (run.distractor_tokens or [])
    ]
    if not candidates:
        return None

    def score(other: Run) -> tuple[bool, bool]:
        return other.job.endpoint == run.job.endpoint, _trace_key(other) == _trace_key(run)

    best = max(score(other) for other in candidates)
    return next(other for other in candidates if score(other) == best)


def _edited_tags(current: list[str], edit: dict[str, Any]) -> list[str]:
    tags = set(edit["tags"]) if edit.get("tags") is not None else set(current or [])
    tags |= set(edit.get("addTags") or [])
    tags -= set(edit.get("removeTags") or [])
    return sorted(tags)


def edit_run(run: Run, edit: dict[str, Any]) -> Run:
    """Apply ``{"label", "tags", "addTags", "removeTags"}`` (each optional) to one run."""
    if "label" in edit:
        run.label = edit["label"]
    run.tags = _edited_tags(run.tags, edit)
    return run


def edit_job(job: Job, edit: dict[str, Any]) -> Job:
    """Apply an edit to a job and to every one of its runs."""
    if "label" in edit:
        job.label = edit["label"]
    job.tags = _edited_tags(job.tags, edit)
    keep = {row.tag: row for row in job.tag_rows}
    job.tag_rows = [keep.get(tag) or JobTag(tag=tag) for tag in job.tags]
    for run in job.runs:
        edit_run(run, edit)
    return job
