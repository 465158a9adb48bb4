"""A running job that is canceled stops in its engine, and one that runs over its memory fails
with ``resource_exhausted`` without a retry while its worker goes on serving, on the real
processes: ``actq up`` and gunicorn + PostgreSQL + Redis with one prefork worker, both with a
400 MB guard on a job's allocations (``ACTQ_JOB_MEMORY_GUARD_BYTES``) and ``ACTQ_DEBUG_DELAYS``
(a job tagged ``debug-delay=S`` spends S seconds in its engine stage, checking for a stop as the
engine does between layers). The in-process tests show where the engine checks."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import (
    OK_CASES,
    _base_env,
    _create_pg_database,
    _drop_pg_database,
    _flush_redis,
    run_actq,
)
from tests.stack import Stack, free_port, healthy, start_up, wait_until, worker_ready
from tests.test_cost import tdb_request

DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
TDB = next(c for c in OK_CASES if c["endpoint"] == "batched_tdb")
GUARD = {
    "ACTQ_JOB_MEMORY_GUARD_BYTES": str(400 * 1024 * 1024),
    "ACTQ_MAX_RESPONSE_BYTES": str(
        1024 * 1024 * 1024
    ),  # lets the guard, not the estimate, stop one
    "ACTQ_DEBUG_DELAYS": "1",
}


# --- in the engine --------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_the_engine_stops_at_the_first_boundary_after_the_check_says_so(engine_model):
    from worker.engine import run
    from worker.engine.stopping import stop_when

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 5:
            raise Stop

    with stop_when(check), pytest.raises(Stop):
        run(TDB["endpoint"], TDB["request"], engine_model)
    assert len(calls) == 5  # stopped inside the forward pass, at its fifth hooked point
    run(TDB["endpoint"], TDB["request"], engine_model)  # no check installed: runs to the end


def test_the_engine_checks_in_the_backward_pass_too(engine_model):
    from worker.engine import run
    from worker.engine.stopping import stop_when

    forward_points = []

    def count():
        forward_points.append(1)

    with stop_when(count):
        run(TDB["endpoint"], TDB["request"], engine_model)
    total = len(forward_points)
    seen = []

    def stop_late():
        seen.append(1)
        if len(seen) == total - 1:
            raise Stop

    with stop_when(stop_late), pytest.raises(Stop):
        run(TDB["endpoint"], TDB["request"], engine_model)


# --- on the real processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_embedded(tmp_path_factory, golden_model_dir):
    workdir = tmp_path_factory.mktemp("guarded-embedded")
    port = free_port()
    env = {**_base_env(workdir), **GUARD}
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    try:
        start_up(stack, port, workdir / "data", golden_model_dir)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def guarded_gunicorn(tmp_path_factory, pg_server_url, redis_url, golden_model_dir):
    workdir = tmp_path_factory.mktemp("guarded-gunicorn")
    name, db = _create_pg_database(pg_server_url)
    broker = redis_url.rsplit("/", 1)[0] + "/7"  # not the session stack's queue
    _flush_redis(broker)
    port = free_port()
    env = {
        **_base_env(workdir),
        **GUARD,
        "ACTQ_DATABASE_URL": db,
        "ACTQ_BROKER_URL": broker,
        "ACTQ_MODEL": str(golden_model_dir),
    }
    assert run_actq("db", "upgrade", env=env).returncode == 0
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    try:
        stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2")
        worker = stack.add("worker", "worker", "--pool", "prefork", "--concurrency", "1")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        wait_until(lambda: worker_ready(worker), 120, "worker", stack)
        yield stack
    finally:
        stack.stop()
        _drop_pg_database(pg_server_url, name)


@pytest.fixture(params=["embedded", "gunicorn"])
def guarded(request):
    return request.getfixturevalue(f"guarded_{request.param}")


def _job(stack, job_id: str) -> dict:
    return requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=30).json()


def _poll(stack, job_id: str, done, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(stack, job_id)
        if done(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"{job_id}: {_job(stack, job_id)}\n{stack.logs()}")


def _final(stack, job_id: str, timeout: float = 120) -> dict:
    return _poll(stack, job_id, lambda j: j["status"] not in ("queued", "started"), timeout)


def _submit(stack, endpoint: str, request: dict, query: str = "") -> str:
    response = requests.post(f"{stack.url}/v1/{endpoint}?fresh=1{query}", json=request, timeout=60)
    assert response.status_code == 202, response.text[:500]
    return response.json()["id"]


@pytest.mark.slow
def test_a_job_over_its_memory_fails_once_and_the_worker_serves_on(guarded):
    # accepted by the estimate (the response limit raised to 1 GiB), but its 8 sub-requests of 63
    # tokens and K 1000 pass the worker's 400 MB guard (about 1 GB resident at its peak unguarded)
    big = _submit(guarded, "batched_tdb", tdb_request(63, 8, 1000))
    failed = _final(guarded, big, timeout=600)  # about 15 s of engine here before the guard trips
    assert (failed["status"], failed["error"]["type"]) == ("failed", "resource_exhausted")
    assert failed["attempts"] == 1
    assert "ACTQ_JOB_MEMORY_GUARD_BYTES" in failed["error"]["message"]
    after = _final(guarded, _submit(guarded, DS["endpoint"], DS["request"]))
    assert after["status"] == "finished"
    assert _job(guarded, big)["attempts"] == 1  # never claimed again


@pytest.mark.slow
def test_a_canceled_running_job_stops_in_its_engine_stage(guarded):
    job_id = _submit(guarded, DS["endpoint"], DS["request"], "&tag=debug-delay=600")
    _poll(guarded, job_id, lambda j: j["status"] == "started")
    asked = time.monotonic()
    response = requests.post(f"{guarded.url}/v1/jobs/{job_id}/cancel", timeout=30)
    assert response.status_code == 202, response.text
    final = _final(guarded, job_id, timeout=120)  # far less than the 600 s it would sleep
    print(f"FIGURES cancel-running: canceled-after={time.monotonic() - asked:.2f}s")
    assert final["status"] == "canceled"
    assert _final(guarded, _submit(guarded, DS["endpoint"], DS["request"]))["status"] == "finished"


@pytest.mark.slow
def test_100_waiters_are_capped_and_other_clients_are_still_answered(guarded):
    from concurrent.futures import ThreadPoolExecutor

    slots = 32 * (2 if "api" in guarded.processes else 1)  # ACTQ_MAX_WAITERS per API process
    job_id = _submit(guarded, DS["endpoint"], DS["request"], "&tag=debug-delay=600")
    _poll(guarded, job_id, lambda j: j["status"] == "started")
    url = f"{guarded.url}/v1/jobs/{job_id}/result?wait=60"
    with ThreadPoolExecutor(100) as pool:
        waiting = [pool.submit(requests.get, url, timeout=180) for _ in range(100)]
        deadline = time.monotonic() + 90
        while sum(not w.done() for w in waiting) > slots:  # the rest were refused
            assert time.monotonic() < deadline, [
                w.result().status_code for w in waiting if w.done()
            ]
            time.sleep(0.1)
        asked = time.monotonic()
        others = [
            requests.get(f"{guarded.url}{path}", timeout=60) for path in ("/v1/models", "/v1/jobs")
        ]
        answered_in = time.monotonic() - asked
        still_waiting = sum(not w.done() for w in waiting)
        requests.post(f"{guarded.url}/v1/jobs/{job_id}/cancel", timeout=30)
        answers = [w.result() for w in waiting]
    assert [o.status_code for o in others] == [200, 200]
    refused = [a for a in answers if a.status_code == 503]
    assert len(refused) >= 100 - slots
    assert all(a.headers["Retry-After"] == "2" for a in refused)
    assert {a.json()["error"]["type"] for a in refused} == {"service_unavailable"}
    assert {a.status_code for a in answers} <= {503, 409, 202}  # 409: canceled while waited for
    print(
        f"FIGURES waiters: refused={len(refused)} waiting={still_waiting} "
        f"other-client-two-requests={answered_in:.2f}s"
    )
