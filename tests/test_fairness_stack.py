"""Fairness between owners on the real processes: a private PostgreSQL and Redis, the API under
gunicorn, one ``actq worker`` (one job at a time, so the order of starts is the order of claims),
two API keys. Bob queues 40 jobs; alice's one job must start within the time of two of his.

The test asserts on the order of the jobs' starts as the API reports them, never on how long
anything took: each of bob's jobs sleeps 1 s in its engine stage (``ACTQ_DEBUG_DELAYS``) only so
that his queue is still long when alice submits.
"""

from __future__ import annotations

import time

import pytest

from api.client import Client
from tests.conftest import OK_CASES, _base_env, run_actq
from tests.stack import Stack, free_port, healthy, wait_until
from tests.test_faults import _ready_after, services  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.slow

DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
BOBS = 40


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory, services, golden_model_dir):  # noqa: F811
    workdir = tmp_path_factory.mktemp("fair-stack")
    port = free_port()
    env = _base_env(workdir)
    env.update(
        ACTQ_DATABASE_URL=services.database_url,
        ACTQ_BROKER_URL=services.broker_url,
        ACTQ_MODEL=str(golden_model_dir),
        ACTQ_DEBUG_DELAYS="1",
        ACTQ_RATE_PER_MINUTE="0",
    )
    assert run_actq("db", "upgrade", env=env).returncode == 0
    keys = {}
    for name in ("alice", "bob"):
        made = run_actq("keys", "create", name, env=env)
        assert made.returncode == 0, made.stderr
        keys[name] = made.stdout.decode().strip()
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.keys = keys
    try:
        stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "1")
        stack.add("w1", "worker", "--pool", "prefork", "--concurrency", "1")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        wait_until(lambda: _ready_after(stack.processes["w1"], 0), 120, "w1", stack)
        yield stack
    finally:
        stack.stop()


def _final(client: Client, job_id: str, stack: Stack, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["status"] not in ("queued", "started"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id}: {client.status(job_id)}\n{stack.logs()}")


def test_one_owner_s_40_queued_jobs_do_not_hold_back_another_owner_s_job(keyed_stack):
    bob = Client(keyed_stack.url, key=keyed_stack.keys["bob"])
    alice = Client(keyed_stack.url, key=keyed_stack.keys["alice"])
    tags = ["debug-delay=1"]
    bobs = [
        bob.submit(DS["endpoint"], DS["request"], tags=tags, fresh=True)["id"] for _ in range(BOBS)
    ]
    mine = alice.submit(DS["endpoint"], DS["request"], fresh=True)["id"]
    seen = alice.status(mine)
    assert seen["queuePosition"] in (0, None)  # next in line (None: already started)
    last = bob.status(bobs[-1])
    assert last["status"] != "queued" or last["queuePosition"] >= 1  # behind alice's
    done = _final(alice, mine, keyed_stack)
    assert (done["status"], done["queuePosition"]) == ("finished", None)
    theirs = [_final(bob, job_id, keyed_stack) for job_id in bobs]
    assert all((j["status"], j["attempts"]) == ("finished", 1) for j in theirs)  # none lost
    after = sorted(j["startedAt"] for j in theirs if j["startedAt"] > done["createdAt"])
    assert len(after) >= 10  # bob's queue was long when alice submitted
    ahead = [s for s in after if s < done["startedAt"]]
    assert len(ahead) <= 2, (ahead, done)  # alice's started within the time of two of bob's
    print(
        f"FIGURES fairness: bob's jobs started after alice submitted and before hers started: "
        f"{len(ahead)} (of {len(after)} still to start when she submitted)"
    )
