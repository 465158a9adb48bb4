"""``actq.run_sweep(sweep_id)``: a sweep's baseline and points, run in shared passes.

* **Claim** (``models.store.sweeps.claim_sweep``): ``queued -> started``, or a started sweep whose
  heartbeat is older than the lease (its worker died and the broker delivered the message again).
* **Jobs**: on its first attempt the worker fills in the clean run's means (``values: "mean"``)
  and makes the baseline's and every point's job (``make_jobs``), in one transaction; a later
  attempt finds them and runs those not yet final.
* **Passes**: jobs are taken in order (the baseline first), as many per pass as fit the memory
  budget (``ACTQ_MAX_JOB_MEMORY_BYTES`` over one point's estimated peak), each claimed with the
  job's own conditional claim (so a job another worker holds is left to it) and stored with the
  job's own conditional finish: each point is a job like any other, finished once.
* **Others' points**: a point another worker holds (requeued by the reaper and sent alone, or
  taken by a co-batching worker) is waited for, not run twice; its row's numbers are read from
  its stored response at the end.
* **Guards**: the clean means' pass and every pass of points run under a job's soft time limit
  and memory guard (``JobLimits``: ``ACTQ_JOB_SOFT_TIME_LIMIT``, ``ACTQ_JOB_MEMORY_GUARD_BYTES``),
  as a pack of co-batched jobs does: a pass that passes one runs its points again one by one,
  each under its own, and a point over them alone fails like a job (``timeout``,
  ``resource_exhausted``) while the sweep goes on.
* **Cancel**: before each pass the sweep looks whether a cancel was asked; its remaining points
  are canceled (the API already canceled those queued) and the sweep ends ``canceled``.
* **Late ack**: the message is acknowledged after the sweep's outcome is stored.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from models.checks.sweeps import Base, Point, point_request
from models.store import jobs as job_store
from models.store import sweeps as store
from models.store.recovery import request_cancel
from models.store.runs import run_losses
from models.store.tables import Job, Sweep
from models.wire.encoding import dumps
from worker.execution import error_record, release_memory
from worker.limits import JobLimits, soft_time_limit
from worker.watch import memory_guard

log = logging.getLogger(__name__)

MAX_PASS = 64  # points in one pass, whatever the budget
WAIT_SECONDS = 0.5  # between looks at points another worker holds


def execute_sweep(
    sessions: sessionmaker[Session],
    sweep_id: str,
    *,
    model: Callable[[], object],
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    memory_budget: int,
    limits: JobLimits | None = None,
) -> str | None:
    """Run one sweep end to end; its final status, or None if not claimable (or lost).

    ``limits`` gives its passes a job's soft time limit and memory guard (default: none)."""
    with sessions.begin() as session:
        attempt = store.claim_sweep(session, sweep_id, worker, lease_seconds, max_attempts)
    if attempt is None:
        log.info("Sweep %s: not claimable (duplicate message or already done)", sweep_id)
        return None
    try:
        guards = limits or JobLimits()
        return _run(
            sessions, sweep_id, attempt, model(), worker, lease_seconds, memory_budget, guards
        )
    except Exception as error:
        log.exception("Sweep %s failed", sweep_id)
        with sessions.begin() as session:
            store.end_sweep(session, sweep_id, attempt, "failed", error_record(error))
        return "failed"


def guarded(limits: JobLimits, run: Callable[[], object]):
    """``run()`` under a job's soft time limit and memory guard."""
    with soft_time_limit(limits.soft_time_limit), memory_guard(limits.memory_guard_bytes):
        return run()


def _make_jobs(session: Session, sweep: Sweep, loaded, limits: JobLimits) -> None:
    from worker.sweep_means import clean_means

    base = Base(sweep.endpoint, sweep.base_request, "base")
    points = store.points_of(session, sweep.id)
    means = {}
    wanted = list(
        dict.fromkeys((p.node_type, p.layer, p.node_index) for p in points if p.value is None)
    )
    if wanted:
        means = guarded(
            limits, lambda: clean_means(sweep.endpoint, sweep.base_request, wanted, loaded)
        )
    values = [
        p.value if p.value is not None else means[(p.node_type, p.layer, p.node_index)]
        for p in points
    ]
    requests = [base.request] + [
        point_request(base, Point(p.node_type, p.layer, p.node_index, p.position, None), v)
        for p, v in zip(points, values, strict=True)
    ]
    store.make_jobs(session, sweep, requests, values)


def _run(sessions, sweep_id, attempt, loaded, worker, lease_seconds, budget, limits):
    with sessions.begin() as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep.baseline_job_id is None:
            _make_jobs(session, sweep, loaded, limits)
        order = [sweep.baseline_job_id] + [p.job_id for p in store.points_of(session, sweep_id)]
        index_of = {job_id: i for i, job_id in enumerate(order)}  # 0: the baseline
        per_pass = max(1, min(MAX_PASS, budget // max(1, sweep.point_memory_bytes)))
    log.info("Sweep %s: %d jobs, up to %d per pass", sweep_id, len(order), per_pass)
    while pending := _pending(sessions, order):
        with sessions.begin() as session:
            if store.cancel_asked(session, sweep_id):
                for job_id in pending:
                    request_cancel(session, job_id)
                store.end_sweep(session, sweep_id, attempt, "canceled")
                log.info("Sweep %s: canceled, %d jobs not run", sweep_id, len(pending))
                return "canceled"
            if not store.beat(session, sweep_id, attempt):
                log.warning("Sweep %s: attempt %d lost its claim; stopping", sweep_id, attempt)
                return None
        ran = _run_pass(
            sessions, sweep_id, pending, per_pass, index_of, loaded, worker, lease_seconds, limits
        )
        if not ran:  # the rest is held by other workers (a requeued point, a co-batch): wait
            time.sleep(WAIT_SECONDS)
    with sessions.begin() as session:
        _collect(session, sweep_id)
        status = "canceled" if store.cancel_asked(session, sweep_id) else "finished"
        ended = store.end_sweep(session, sweep_id, attempt, status)
    return status if ended else None


def _collect(session, sweep_id: str) -> None:
    """The node values of points another worker finished (their jobs were taken elsewhere)."""
    from worker.sweep_passes import node_table, node_value

    sweep = session.get(Sweep, sweep_id)
    for point in store.points_of(session, sweep_id):
        job = session.get(Job, point.job_id) if point.loss is None and point.job_id else None
        if job is None or job.status != "finished":
            continue
        response = json.loads(job_store.response_bytes(job))
        value = node_value(node_table(response), sweep.node, sweep.node_group)
        store.record_point(session, sweep_id, point.index, job.runs[0].loss, value)


def _pending(sessions, order: list[str]) -> list[str]:
    with sessions() as session:
        statuses = dict(session.query(Job.id, Job.status).filter(Job.id.in_(order)).all())
    return [job_id for job_id in order if statuses.get(job_id) not in store.FINAL]


def _run_pass(sessions, sweep_id, pending, limit, index_of, loaded, worker, lease, guards) -> int:
    """Claim up to ``limit`` of ``pending`` in order (a job another worker holds is left to it),
    run them in shared passes, store each; how many it ran."""
    from worker.sweep_passes import group_of

    claimed: list[tuple[str, int, str, dict]] = []
    with sessions.begin() as session:
        for job_id in pending:
            if len(claimed) == limit:
                break
            attempt = job_store.claim_job(session, job_id, worker, lease)
            if attempt is not None:
                job = session.get(Job, job_id)
                claimed.append((job_id, attempt, job.endpoint, job.request))
    if not claimed:
        return 0
    start = time.perf_counter()
    groups, outcomes = [], {}
    for job_id, _, endpoint, request in claimed:
        try:
            groups.append((job_id, group_of(endpoint, request, loaded)))
        except Exception as error:  # a request the model cannot serve fails its own job only
            outcomes[job_id] = error_record(error)
    answers = _answers([g for _, g in groups], loaded, guards)
    for (job_id, _), answer in zip(groups, answers, strict=True):
        outcomes[job_id] = error_record(answer) if isinstance(answer, Exception) else answer
    seconds = (time.perf_counter() - start) / len(claimed)
    with sessions.begin() as session:
        for job_id, attempt, endpoint, _ in claimed:
            _store(
                session,
                sweep_id,
                job_id,
                attempt,
                endpoint,
                outcomes[job_id],
                seconds,
                index_of[job_id],
            )
    return len(claimed)


def _answers(groups: list, loaded, limits: JobLimits) -> list:
    """Each group's answer from one guarded pass; if that pass fails (not a refusal: those come
    back in place) or passes a guard, each group alone under its own guards, to tell them apart:
    an error then is that point's own."""
    from worker.sweep_passes import run_point_groups

    try:
        return guarded(limits, lambda: run_point_groups(groups, loaded))
    except Exception as error:
        release_memory()
        if len(groups) == 1:
            return [error]
    answers = []
    for group in groups:
        try:
            answers.extend(guarded(limits, lambda group=group: run_point_groups([group], loaded)))
        except Exception as error:
            release_memory()
            answers.append(error)
    return answers


def _store(session, sweep_id, job_id, attempt, endpoint, outcome, seconds, index) -> None:
    from worker.sweep_passes import node_table, node_value, table_group, top_node

    if "inferenceSubResponses" not in outcome:  # an error record
        job_store.fail_job(session, job_id, attempt, outcome)
        return
    losses = run_losses(endpoint, outcome)
    if not job_store.finish_job(session, job_id, attempt, dumps(outcome), losses, seconds):
        return
    sweep = session.get(Sweep, sweep_id)
    table = node_table(outcome)
    if index == 0:
        group = table_group(table, sweep.node_group)
        sweep.node = sweep.node or top_node(table, group)
        sweep.node_group = group or sweep.node_group
        sweep.baseline_loss = losses[0] if losses else None
        sweep.baseline_node_value = node_value(table, sweep.node, group)
        session.flush()
        return
    value = node_value(table, sweep.node, sweep.node_group)
    store.record_point(session, sweep_id, index - 1, losses[0] if losses else None, value)


def run_sweep(task, sweep_id: str) -> str | None:
    """The body of ``actq.run_sweep``."""
    from worker import tasks

    settings = tasks._state.settings
    return execute_sweep(
        tasks.process_sessions(),
        sweep_id,
        model=tasks._state.model,
        worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        memory_budget=settings.max_job_memory_bytes,
        limits=JobLimits.from_settings(settings),
    )


def register(app) -> None:
    app.task(name=store.SWEEP_TASK, bind=True, ignore_result=True, acks_late=True)(run_sweep)
