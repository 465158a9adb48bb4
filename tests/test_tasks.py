"""The task logic as plain functions, with the real engine and the golden model: claim, run, store."""

from __future__ import annotations

import json

import pytest

from models.errors import RequestError
from models.store import jobs as store
from models.store.tables import Job
from tests.conftest import GOLDEN_MODEL_NAME, OK_CASES, assert_same_response, strip_timing
from worker.execution import error_record, execute_job

CASE = next(c for c in OK_CASES if c["name"].startswith("061"))


def _submit(sessions, case=CASE, request=None) -> str:
    with sessions.begin() as session:
        job = store.create_job(
            session,
            endpoint=case["endpoint"],
            model=GOLDEN_MODEL_NAME,
            model_revision="r",
            request=case["request"] if request is None else request,
        )
        return job.id


def _job(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_a_job_runs_once_and_stores_the_engine_response(sessions, engine_model):
    from worker.engine import run

    job_id = _submit(sessions)
    loads = []

    def model():
        loads.append(1)
        return engine_model

    assert execute_job(sessions, job_id, model=model, worker="w1") == "finished"
    assert execute_job(sessions, job_id, model=model, worker="w2") is None  # duplicate message
    assert len(loads) == 1
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.worker) == ("finished", 1, "w1")
    stored = json.loads(store.response_bytes(job))
    expected = run(CASE["endpoint"], CASE["request"], engine_model)
    assert_same_response(strip_timing(stored), strip_timing(expected))
    losses = [
        s["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        for s in stored["inferenceSubResponses"]
    ]
    assert [r.loss for r in job.runs] == losses
    assert job.engine_seconds > 0


def test_an_engine_request_error_fails_the_job_without_retry(sessions, engine_model):
    bad = json.loads(json.dumps(CASE["request"]))
    bad["subRequests"][0]["targetTokens"] = [" elephantine"]  # two tokens
    job_id = _submit(sessions, request=bad)
    assert execute_job(sessions, job_id, model=lambda: engine_model, worker="w") == "failed"
    job = _job(sessions, job_id)
    assert job.attempts == 1
    assert 400 <= job.error["status"] < 500
    assert "elephantine" in job.error["message"]
    assert execute_job(sessions, job_id, model=lambda: engine_model, worker="w") is None


def test_an_unexpected_exception_is_stored_with_its_traceback(sessions):
    job_id = _submit(sessions)

    class Model:
        name = GOLDEN_MODEL_NAME

    def broken(endpoint, request, model):
        raise ZeroDivisionError("boom")

    assert execute_job(sessions, job_id, model=Model, runner=broken, worker="w") == "failed"
    error = _job(sessions, job_id).error
    assert error["type"] == "internal_error" and error["status"] == 500
    assert "ZeroDivisionError" in error["traceback"]


def test_a_model_that_cannot_load_fails_the_job_as_unavailable(sessions):
    job_id = _submit(sessions)

    def missing():
        raise FileNotFoundError("no weights")

    assert execute_job(sessions, job_id, model=missing, worker="w") == "failed"
    assert _job(sessions, job_id).error["type"] == "model_unavailable"


def test_a_worker_for_another_model_refuses_the_job(sessions):
    job_id = _submit(sessions)

    class Other:
        name = "other-model"

    assert execute_job(sessions, job_id, model=Other, runner=lambda *a: {}, worker="w") == "failed"
    assert "other-model" in _job(sessions, job_id).error["message"]


def test_heartbeat_is_refreshed_while_the_engine_runs(sessions):
    import time

    job_id = _submit(sessions)
    beats = []

    class Model:
        name = GOLDEN_MODEL_NAME

    def slow(endpoint, request, model):
        start = _job(sessions, job_id).heartbeat_at
        deadline = time.monotonic() + 120  # generous: the machine may be busy
        while time.monotonic() < deadline:
            now = _job(sessions, job_id).heartbeat_at
            if now > start:
                beats.append(now)
                break
            time.sleep(0.05)
        return {"inferenceSubResponses": []}

    status = execute_job(sessions, job_id, model=Model, runner=slow, heartbeat_seconds=0.1)
    assert status == "finished"
    assert beats, "the heartbeat was never refreshed"


def test_error_record_of_an_actq_error_keeps_status_and_path():
    record = error_record(RequestError("not one token", path="subRequests.0.targetTokens.0"))
    assert record == {
        "type": "bad_request",
        "message": "not one token",
        "path": "subRequests.0.targetTokens.0",
        "status": 400,
    }


@pytest.mark.parametrize("case", OK_CASES[:3], ids=lambda c: c["name"])
def test_other_endpoints_finish(sessions, engine_model, case):
    job_id = _submit(sessions, case=case)
    assert execute_job(sessions, job_id, model=lambda: engine_model) == "finished"
