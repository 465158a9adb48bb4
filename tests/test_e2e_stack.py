"""End to end on real parts: gunicorn API, two ``actq worker`` processes, PostgreSQL and Redis.

Every golden request goes in through the HTTP API; each result must equal what
``worker.engine.run`` gives for the same request in this process (timing fields aside), and each
bad request must be refused at the door.
"""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import requests

from api.client import Client
from models.wire.encoding import dumps
from tests.conftest import ERROR_CASES, OK_CASES, assert_same_response, strip_timing


@pytest.fixture(scope="module")
def api(full_stack) -> Client:
    return Client(full_stack.url, timeout=60)


@pytest.fixture(scope="module")
def submitted(api) -> dict[str, dict]:
    """Every good golden case submitted at once, so both workers have work."""
    return {
        case["name"]: api.submit(
            case["endpoint"], case["request"], tags=["e2e"], label=case["name"]
        )
        for case in OK_CASES
    }


@pytest.mark.parametrize("case", OK_CASES, ids=[c["name"] for c in OK_CASES])
def test_every_route_gives_the_engine_result(api, submitted, engine_model, case):
    from worker.engine import run

    job = submitted[case["name"]]
    final = api.wait(job["id"], timeout=300)
    assert final["status"] == "finished", final
    status, body = api.result(job["id"])
    assert status == 200
    stored = json.loads(body)
    assert dumps(stored).encode() == body
    expected = run(case["endpoint"], case["request"], engine_model)
    assert_same_response(strip_timing(stored), strip_timing(expected))


def test_both_workers_took_jobs_and_each_ran_once(api, submitted):
    finals = [api.wait(job["id"], timeout=300) for job in submitted.values()]
    assert all(f["attempts"] == 1 for f in finals)
    workers = {f["worker"].rsplit(":", 1)[0] for f in finals}
    assert len(workers) == 2, workers


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["name"] for c in ERROR_CASES])
def test_bad_requests_are_refused_and_nothing_is_stored(api, full_stack, case):
    before = len(api.history(limit=500)["jobs"])
    response = requests.post(
        f"{full_stack.url}/v1/{case['endpoint']}", json=case["request"], timeout=30
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["path"]
    assert len(api.history(limit=500)["jobs"]) == before


def test_tdb_compatible_route_waits_and_answers_like_tdb(full_stack, engine_model):
    from worker.engine import run

    case = next(c for c in OK_CASES if c["endpoint"] == "batched_tdb")
    response = requests.post(f"{full_stack.url}/batched_tdb", json=case["request"], timeout=300)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    expected = run(case["endpoint"], case["request"], engine_model)
    assert_same_response(strip_timing(response.json()), strip_timing(expected))
    info = requests.post(f"{full_stack.url}/model_info", timeout=300)
    assert info.json() == run("model_info", None, engine_model)


def test_submit_with_wait_returns_the_response(api, engine_model):
    case = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
    response = api.submit(case["endpoint"], case["request"], wait=60)
    assert "inferenceAndTokenData" in response


def test_history_lists_the_jobs_with_their_runs(api, submitted):
    for job in submitted.values():
        api.wait(job["id"], timeout=300)
    page = api.history(tag="e2e", limit=500)
    assert {j["id"] for j in page["jobs"]} == {j["id"] for j in submitted.values()}
    ids = [j["id"] for j in page["jobs"]]
    assert ids == sorted(ids, reverse=True)
    tdb = next(j for j in page["jobs"] if j["label"].startswith("061"))
    assert [r["hasAblations"] for r in tdb["runs"]] == [False, True]
    assert all(r["loss"] is not None for r in tdb["runs"])
    assert api.history(tag="e2e", status="failed")["jobs"] == []


def test_concurrent_submissions_all_finish(api):
    case = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: api.submit(case["endpoint"], case["request"]), range(16)))
    assert len({j["id"] for j in jobs}) == 16
    finals = [api.wait(j["id"], timeout=300) for j in jobs]
    assert {f["status"] for f in finals} == {"finished"}
