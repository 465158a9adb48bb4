"""Co-batching in the worker (worker/cobatch.py) as plain functions, on SQLite and PostgreSQL with
the real engine: jobs claimed together are each stored exactly as alone and announced, and the
claim takes only what nobody else holds."""

from __future__ import annotations

import json

from models.store import jobs as store
from models.store.tables import Job
from models.wire.encoding import dumps
from tests.conftest import GOLDEN_CASES, GOLDEN_MODEL_NAME, strip_timing
from worker.cobatch import execute_jobs
from worker.execution import execute_job

# A mix of every route without autoencoders, a refused request among them.
MIX = [
    next(c for c in GOLDEN_CASES if c["name"].startswith(prefix))
    for prefix in ("002", "024", "034", "053", "061")
] + [next(c for c in GOLDEN_CASES if c.get("error") is not None)]
assert len({c["endpoint"] for c in MIX}) >= 3


def _submit(sessions, case) -> str:
    with sessions.begin() as session:
        job = store.create_job(
            session,
            endpoint=case["endpoint"],
            model=GOLDEN_MODEL_NAME,
            model_revision="r",
            request=case["request"],
        )
        return job.id


def _job(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def _stored(sessions, job_id) -> str:
    """The job's stored response without its timing fields, or its error, as JSON text."""
    job = _job(sessions, job_id)
    if job.response is None:
        return dumps({k: v for k, v in job.error.items() if k != "traceback"})
    return dumps(strip_timing(json.loads(store.response_bytes(job))))


def _pass_time(sessions, job_id) -> float | None:
    job = _job(sessions, job_id)
    if job.response is None:
        return None
    data = json.loads(store.response_bytes(job))
    subs = data.get("inferenceSubResponses")
    token_data = (
        subs[0]["inferenceResponse"]["inferenceAndTokenData"]
        if subs
        else data["inferenceAndTokenData"]
    )
    return token_data["inferenceTime"]


def test_jobs_run_together_are_stored_exactly_as_alone_and_each_announced(sessions, engine_model):
    alone_ids = [_submit(sessions, case) for case in MIX]
    for job_id in alone_ids:  # one by one: nothing else is waiting for the worker
        assert execute_jobs(
            sessions, job_id, model=lambda: engine_model, batch_jobs=1, announce=lambda _: None
        ) in ("finished", "failed")
    alone = [_stored(sessions, job_id) for job_id in alone_ids]

    together_ids = [_submit(sessions, case) for case in MIX]
    announced: list[str] = []
    status = execute_jobs(
        sessions,
        together_ids[0],
        model=lambda: engine_model,
        batch_jobs=len(MIX),
        announce=announced.append,
        worker="w",
    )
    assert status == "finished"
    assert sorted(announced) == sorted(together_ids)
    assert [_stored(sessions, job_id) for job_id in together_ids] == alone
    jobs = [_job(sessions, job_id) for job_id in together_ids]
    assert {(j.worker, j.attempts) for j in jobs} == {("w", 1)}
    assert [j.status for j in jobs] == ["finished"] * (len(MIX) - 1) + ["failed"]
    shared = {_pass_time(sessions, job_id) for job_id in together_ids} - {None}
    assert len(shared) == 1  # one pass answered every job it could


def test_the_claim_takes_only_waiting_jobs_and_at_most_n(sessions, engine_model):
    ids = [_submit(sessions, MIX[0]) for _ in range(4)]
    with sessions.begin() as session:  # another worker holds the second one
        assert store.claim_job(session, ids[1], "other", 600) == 1
    status = execute_jobs(
        sessions,
        ids[0],
        model=lambda: engine_model,
        batch_jobs=2,
        announce=lambda _: None,
        worker="w",
    )
    assert status == "finished"
    jobs = [_job(sessions, job_id) for job_id in ids]
    assert [(j.status, j.worker) for j in jobs] == [
        ("finished", "w"),
        ("started", "other"),
        ("finished", "w"),
        ("queued", None),
    ]
    assert (
        execute_jobs(
            sessions, ids[2], model=lambda: engine_model, batch_jobs=8, announce=lambda _: None
        )
        is None
    )  # its own message, delivered later, claims nothing
    assert execute_job(sessions, ids[3], model=lambda: engine_model) == "finished"
