"""Co-batching on the real stack: PostgreSQL, Redis, the API under gunicorn and one ``actq worker``
with ``ACTQ_BATCH_JOBS=8``. Jobs that wait while the worker is busy are run together and stored
exactly as the same jobs run one by one; a worker killed mid-pack loses none of them.

Every wait is on the jobs' state (the API's job records), with generous deadlines; the debug
delay (``ACTQ_DEBUG_DELAYS=1``) only holds the worker busy for a few HTTP round trips.
"""

from __future__ import annotations

import json

import pytest
import requests

from api.client import Client
from models.wire.encoding import dumps
from tests.conftest import OK_CASES, _base_env, run_actq, strip_timing
from tests.stack import Stack, free_port, healthy, wait_until
from tests.test_faults import (  # noqa: F401 - ``services`` is a fixture
    BUSY,
    DS,
    STACK_ENV,
    _final,
    _finish_counts,
    _holder,
    _poll,
    _query,
    _start_worker,
    _status,
    services,
)

pytestmark = pytest.mark.slow

MIX = [
    next(c for c in OK_CASES if c["name"].startswith(prefix))
    for prefix in ("002", "021", "024", "034", "053", "061")
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, services, golden_model_dir):  # noqa: F811
    workdir = tmp_path_factory.mktemp("cobatch-stack")
    port = free_port()
    env = _base_env(workdir)
    env.update(
        STACK_ENV,
        ACTQ_BATCH_JOBS="8",
        ACTQ_DATABASE_URL=services.database_url,
        ACTQ_BROKER_URL=services.broker_url,
        ACTQ_MODEL=str(golden_model_dir),
    )
    migrate = run_actq("db", "upgrade", env=env)
    assert migrate.returncode == 0, migrate.stderr
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.services = services
    try:
        stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        _start_worker(stack, "w1")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(stack) -> Client:
    return Client(stack.url, timeout=30)


def _submit(api: Client, case: dict, tag: str, delay: float = 0.0) -> str:
    tags = [tag] + ([f"debug-delay={delay:g}"] if delay else [])
    return api.submit(case["endpoint"], case["request"], tags=tags, fresh=True)["id"]


def _stored(stack: Stack, job_id: str) -> str:
    """The stored response, its timing fields aside, as JSON text."""
    body = requests.get(f"{stack.url}/v1/jobs/{job_id}/result", timeout=30)
    assert body.status_code == 200, body.text
    return dumps(strip_timing(json.loads(body.content)))


def _pass_time(stack: Stack, job_id: str) -> float:
    body = requests.get(f"{stack.url}/v1/jobs/{job_id}/result", timeout=30).json()
    if "inferenceSubResponses" in body:
        return body["inferenceSubResponses"][0]["inferenceResponse"]["inferenceAndTokenData"][
            "inferenceTime"
        ]
    return body["inferenceAndTokenData"]["inferenceTime"]


def _busy_worker(stack: Stack, api: Client, tag: str) -> str:
    """A job that keeps the one worker busy for BUSY seconds, once it has started."""
    blocker = _submit(api, DS, tag, delay=BUSY)
    _poll(stack, blocker, lambda j: j["status"] == "started")
    return blocker


def test_jobs_waiting_together_are_stored_exactly_as_one_by_one(stack, api):
    alone = []
    for case in MIX:  # one at a time: nothing else waits, so each runs alone
        job_id = _submit(api, case, "alone")
        assert _final(stack, job_id)["status"] == "finished"
        alone.append(_stored(stack, job_id))
    blocker = _busy_worker(stack, api, "together")
    ids = [_submit(api, case, "together") for case in MIX]
    assert _status(stack, ids[-1])["status"] == "queued"
    finals = [_final(stack, job_id) for job_id in ids]
    assert [f["status"] for f in finals] == ["finished"] * len(MIX)
    assert [_stored(stack, job_id) for job_id in ids] == alone
    assert _final(stack, blocker)["status"] == "finished"
    # they ran together: one claim per job, one worker, one pass (its time in every response)
    assert {(f["attempts"], f["worker"]) for f in finals} == {(1, finals[0]["worker"])}
    assert len({_pass_time(stack, job_id) for job_id in ids}) == 1
    assert _finish_counts(stack, ids) == [1] * len(ids)


def test_a_worker_killed_mid_pack_loses_none_of_its_jobs(stack, api):
    _busy_worker(stack, api, "kill-pack")
    ids = [_submit(api, DS, "kill-pack", delay=BUSY) for _ in range(4)]
    started = [_poll(stack, job_id, lambda j: j["status"] == "started") for job_id in ids]
    holders = {_holder(stack, job).name for job in started}
    assert holders == {"w1"}  # one pack: every job claimed by the one worker
    stack.processes["w1"].kill()  # SIGKILL to the worker and its pool process, mid-pack
    _start_worker(stack, "w1")
    finals = [_final(stack, job_id, timeout=120) for job_id in ids]
    assert [f["status"] for f in finals] == ["finished"] * len(ids)
    assert [f["attempts"] for f in finals] == [2] * len(ids)
    assert _finish_counts(stack, ids) == [1] * len(ids)
    stored = _query(
        stack, "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND response IS NOT NULL", ids=ids
    )
    assert stored[0][0] == len(ids)
