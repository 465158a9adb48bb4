"""Fault injection on the real processes: a private PostgreSQL and Redis (``scripts/services.sh``),
the API under gunicorn and two ``actq worker`` processes, killed and restarted from the tests.

The stack runs with a 4 s lease, half-second heartbeats and reaper sweeps, and
``ACTQ_DEBUG_DELAYS=1`` so that a job tagged ``debug-delay=S`` sleeps S seconds in its engine
stage (long enough to kill its worker, cancel it or pass its time limit). Each test leaves two
live workers behind. The figures the tests see are printed on lines starting ``FIGURES``
(``pytest -rP tests/test_faults.py`` shows them).

No outcome here may depend on how fast the (shared, loaded) machine is: a test waits on the
state it asserts (the job's status, a worker's log line, Redis' unacked set), each with a
generous deadline, and the hard time limit is sized from how long a fresh process takes here to
load the model. The debug delays only need to outlast a few HTTP round trips.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from api.client import Client
from models.store.db import make_engine
from tests.conftest import OK_CASES, REPO, _base_env, run_actq
from tests.stack import Process, Stack, free_port, healthy, wait_until

pytestmark = pytest.mark.slow

DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
LEASE = 4
SOFT_LIMIT = 15  # seconds; longer than every debug delay below but the runaway's
BUSY = 5  # the debug delay of a job that must still be running a few requests later
STACK_ENV = {
    "ACTQ_LEASE_SECONDS": str(LEASE),
    "ACTQ_HEARTBEAT_SECONDS": "0.5",
    "ACTQ_REAP_SECONDS": "0.5",
    "ACTQ_DEBUG_DELAYS": "1",
    "ACTQ_JOB_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
    "ACTQ_JOB_TIME_LIMIT": "60",
    "ACTQ_MAX_ATTEMPTS": "3",
    "ACTQ_RATE_BURST": "20",
    # one job per worker process, as these scenarios count on (tests/test_cobatch_stack.py runs
    # the same stack with co-batching)
    "ACTQ_BATCH_JOBS": "1",
}


@dataclass
class Services:
    folder: Path
    database_url: str
    broker_url: str

    def control(self, command: str) -> None:
        subprocess.run(
            ["bash", "scripts/services.sh", command, str(self.folder)], cwd=REPO, check=True
        )


@pytest.fixture(scope="module")
def services():
    folder = Path(tempfile.mkdtemp(prefix="actq-faults-", dir="/tmp"))
    started = subprocess.run(
        ["bash", "scripts/services.sh", "start", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    urls = dict(re.findall(r"export (\w+)=(\S+)", started.stdout))
    found = Services(folder, urls["ACTQ_TEST_DATABASE_URL"], urls["ACTQ_TEST_BROKER_URL"])
    try:
        yield found
    finally:
        found.control("stop")
        shutil.rmtree(folder, ignore_errors=True)


def _start_worker(stack: Stack, name: str, *extra: str) -> Process:
    process = stack.processes.get(name)
    offset = len(process.log()) if process else 0
    process = stack.add(name, "worker", "--pool", "prefork", *extra)
    wait_until(lambda: _ready_after(process, offset), 120, name, stack)
    return process


def _ready_after(process: Process, offset: int) -> bool:
    if not process.alive():
        raise RuntimeError(f"{process.name} exited:\n{process.log()[-4000:]}")
    return "ready." in process.log()[offset:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, services, golden_model_dir):
    workdir = tmp_path_factory.mktemp("fault-stack")
    port = free_port()
    env = _base_env(workdir)
    env.update(
        STACK_ENV,
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
        for name in ("w1", "w2"):
            stack.add(name, "worker", "--pool", "prefork")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        for name in ("w1", "w2"):
            wait_until(lambda n=name: _ready_after(stack.processes[n], 0), 120, name, stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(stack) -> Client:
    return Client(stack.url, timeout=30)


def _submit(api: Client, delay: float = 0.0, tag: str = "fault") -> str:
    tags = [tag] + ([f"debug-delay={delay:g}"] if delay else [])
    return api.submit(DS["endpoint"], DS["request"], tags=tags, fresh=True)["id"]


def _status(stack: Stack, job_id: str) -> dict:
    return requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()


def _poll(stack: Stack, job_id: str, done, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = _status(stack, job_id)
            if done(job):
                return job
        except (requests.RequestException, ValueError):
            pass  # the API or its database is down for a moment
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: {_status(stack, job_id)}\n{stack.logs()}")


def _final(stack: Stack, job_id: str, timeout: float = 90) -> dict:
    return _poll(stack, job_id, lambda j: j["status"] not in ("queued", "started"), timeout)


def _worker_logs(stack: Stack) -> str:
    return "".join(p.log() for n, p in stack.processes.items() if n.startswith("w"))


def _finish_lines(stack: Stack, job_id: str) -> int:
    return _worker_logs(stack).count(f"Job {job_id}: finished in")


def _finish_counts(stack: Stack, ids: list[str]) -> list[int]:
    """How many times each job was written finished, once every one was: a worker logs the
    line after its write, so the API may say ``finished`` a moment before the line is there."""
    wait_until(lambda: all(_finish_lines(stack, i) for i in ids), 60, "the finish log lines", stack)
    return [_finish_lines(stack, job_id) for job_id in ids]


def _wait_for_log(stack: Stack, name: str, line: str, timeout: float = 60) -> None:
    wait_until(lambda: line in stack.processes[name].log(), timeout, repr(line), stack)


def _cold_load_seconds(stack: Stack) -> float:
    """How long a fresh process takes on this machine, now, to import torch and load the model:
    what a pool process forked after a hard-limit kill does before it runs its next job."""
    script = (
        "import sys, time; t = time.monotonic(); from worker.engine import load_model; "
        "load_model(sys.argv[1], device='cpu'); print(time.monotonic() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, stack.env["ACTQ_MODEL"]],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


def _holder(stack: Stack, job: dict) -> Process:
    """The worker process whose Celery node name (``actq-MODEL-PID@host``) ran ``job``."""
    pid = int(re.search(r"-(\d+)@", job["worker"]).group(1))
    return next(p for n, p in stack.processes.items() if n.startswith("w") and p.popen.pid == pid)


def _query(stack: Stack, sql: str, **params) -> list:
    engine = make_engine(stack.services.database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), params))
    finally:
        engine.dispose()


def test_a_killed_worker_s_job_is_finished_once_by_the_other(stack, api):
    import redis

    ids = [_submit(api, delay=BUSY, tag="kill") for _ in range(4)]
    started = _poll(stack, ids[0], lambda j: j["status"] == "started")
    victim = _holder(stack, started)
    victim.kill()  # SIGKILL to the worker and its pool process, mid-job
    killed_at = time.monotonic()
    finals = {ids[0]: _final(stack, ids[0])}
    recovered_in = time.monotonic() - killed_at  # reported, not asserted: bounded by the lease
    finals.update({job_id: _final(stack, job_id) for job_id in ids[1:]})
    assert {f["status"] for f in finals.values()} == {"finished"}
    assert finals[ids[0]]["attempts"] == 2
    assert _holder(stack, finals[ids[0]]) is not victim
    # The dead worker never acknowledged its message: Redis gives it back after the visibility
    # timeout (the lease), and the claim step turns it into a no-op.
    broker = redis.Redis.from_url(stack.services.broker_url)
    wait_until(lambda: broker.hlen("unacked") == 0, 60, "redelivery of unacked messages", stack)
    broker.close()
    again = {job_id: _status(stack, job_id) for job_id in ids}
    assert [a["attempts"] for a in again.values()] == [f["attempts"] for f in finals.values()]
    assert _finish_counts(stack, ids) == [1] * len(ids)
    stored = _query(
        stack,
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND response IS NOT NULL",
        ids=ids,
    )
    assert stored[0][0] == len(ids)
    print(
        f"FIGURES worker-kill: submitted={len(ids)} finished="
        f"{sum(f['status'] == 'finished' for f in again.values())} attempts="
        f"{sorted(a['attempts'] for a in again.values())} finish-writes="
        f"{sum(_finish_lines(stack, i) for i in ids)} killed-job-finished-after={recovered_in:.1f}s "
        f"lease={LEASE}s"
    )
    _start_worker(stack, next(n for n, p in stack.processes.items() if p is victim))


def test_cancel_a_queued_job_at_once_and_a_started_one_at_its_next_stage(stack, api):
    busy = [_submit(api, delay=BUSY, tag="cancel") for _ in range(2)]
    for job_id in busy:
        _poll(stack, job_id, lambda j: j["status"] == "started")
    waiting = _submit(api, tag="cancel")
    queued = requests.post(f"{stack.url}/v1/jobs/{waiting}/cancel", timeout=10)
    assert (queued.status_code, queued.json()["status"]) == (200, "canceled")
    started = requests.post(f"{stack.url}/v1/jobs/{busy[0]}/cancel", timeout=10)
    assert (started.status_code, started.json()["status"]) == (202, "started")
    assert started.json()["cancelRequestedAt"]
    assert _final(stack, busy[0])["status"] == "canceled"
    assert _final(stack, busy[1])["status"] == "finished"
    canceled = _status(stack, waiting)
    assert (canceled["status"], canceled["attempts"], canceled["startedAt"]) == (
        "canceled",
        0,
        None,
    )
    result = requests.get(f"{stack.url}/v1/jobs/{busy[0]}/result", timeout=10)
    assert (result.status_code, result.json()["error"]["type"]) == (409, "canceled")
    finished = requests.post(f"{stack.url}/v1/jobs/{busy[1]}/cancel", timeout=10)
    assert finished.status_code == 409


def test_a_runaway_job_fails_with_timeout_at_the_soft_limit(stack, api):
    job_id = _submit(api, delay=SOFT_LIMIT + 60, tag="runaway")
    final = _final(stack, job_id, timeout=SOFT_LIMIT + 60)
    assert final["status"] == "failed"
    assert final["error"]["type"] == "timeout"
    assert "ACTQ_JOB_SOFT_TIME_LIMIT" in final["error"]["message"]
    assert _final(stack, _submit(api, tag="after-runaway"))["status"] == "finished"


def test_redis_down_and_restarted_empty_loses_no_job(stack, api):
    """Jobs accepted while Redis is down are published when it is back; messages Redis lost in
    its restart are published again (the reaper sees its marker gone)."""
    services = stack.services
    in_flight = [_submit(api, delay=BUSY, tag="redis") for _ in range(2)]
    waiting = [_submit(api, tag="redis") for _ in range(2)]  # messages that Redis will lose
    for job_id in in_flight:
        _poll(stack, job_id, lambda j: j["status"] == "started")
    services.control("stop-redis")
    accepted = []
    for _ in range(2):
        response = requests.post(
            f"{stack.url}/v1/{DS['endpoint']}?fresh=1&tag=redis", json=DS["request"], timeout=30
        )
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
    unpublished = _query(
        stack,
        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND published_at IS NULL",
        ids=accepted,
    )
    assert unpublished[0][0] == len(accepted)
    services.control("start-redis")
    ids = in_flight + waiting + accepted
    finals = [_final(stack, job_id, timeout=120) for job_id in ids]
    assert [f["status"] for f in finals] == ["finished"] * len(ids)
    assert _finish_counts(stack, ids) == [1] * len(ids)
    print(f"FIGURES redis-restart: submitted={len(ids)} finished={len(finals)}")


def test_postgres_restart_under_load_is_503_and_loses_no_result(stack, api):
    ids = [_submit(api, delay=BUSY, tag="postgres") for _ in range(4)]
    for job_id in ids[:2]:
        _poll(stack, job_id, lambda j: j["status"] == "started")
    retried_before = _worker_logs(stack).count("Database unavailable")
    stack.services.control("stop-pg")
    try:
        for method, url in (
            ("get", f"/v1/jobs/{ids[0]}"),
            ("get", "/v1/jobs"),
            ("post", f"/v1/{DS['endpoint']}?fresh=1"),
            ("get", "/healthz"),
        ):
            response = requests.request(method, stack.url + url, json=DS["request"], timeout=30)
            assert response.status_code == 503, (url, response.text)
            if url != "/healthz":
                assert response.headers["Retry-After"] == "5"
                assert response.json()["error"]["type"] == "service_unavailable"
        # the running jobs end their engine stage while the database is down: their write waits
        wait_until(
            lambda: _worker_logs(stack).count("Database unavailable") > retried_before,
            120,
            "a retried write",
            stack,
        )
    finally:
        stack.services.control("start-pg")
    finals = [_final(stack, job_id, timeout=120) for job_id in ids]
    assert [f["status"] for f in finals] == ["finished"] * len(ids)
    assert _finish_counts(stack, ids) == [1] * len(ids)
    print(
        f"FIGURES postgres-restart: submitted={len(ids)} finished={len(finals)} "
        f"attempts={sorted(f['attempts'] for f in finals)}"
    )


def test_the_hard_time_limit_kills_the_job_s_process_and_fails_it(stack, api):
    """A worker whose hard limit comes before the soft one: Celery kills the pool process and
    the worker's main process fails the job with ``timeout``. Runs last: it stops w1 and w2."""
    for name in ("w1", "w2"):
        stack.processes[name].stop()
    # The job after the kill runs in a freshly forked pool process, which loads the model within
    # the hard limit: the limit is several times what that takes here (a fixed 2 s was not).
    cold = _cold_load_seconds(stack)
    hard = float(max(5, round(4 * cold + 2)))
    stack.env = {
        **stack.env,
        "ACTQ_JOB_TIME_LIMIT": f"{hard:g}",
        "ACTQ_JOB_SOFT_TIME_LIMIT": str(int(10 * hard)),
    }
    _start_worker(stack, "w3")
    job_id = _submit(api, delay=5 * hard, tag="hard")
    final = _final(stack, job_id, timeout=2 * hard + 60)
    assert (final["status"], final["error"]["type"]) == ("failed", "timeout")
    assert "ACTQ_JOB_TIME_LIMIT" in final["error"]["message"]
    _wait_for_log(stack, "w3", f"Hard time limit ({hard:.1f}s) exceeded")
    assert _final(stack, _submit(api, tag="after-hard"), timeout=2 * hard + 60)["status"] == (
        "finished"
    )
    print(f"FIGURES hard-limit: cold-load={cold:.1f}s hard-limit={hard:g}s")


def test_keys_close_the_running_service_and_limits_are_shared_by_its_processes(stack, api):
    """Runs last (it closes the service): keys made with ``actq keys create`` take effect at once
    in every gunicorn process; owners see only their jobs; one Redis bucket per key serves both
    gunicorn processes, so the 21st request of a burst of 20 is refused whichever answers it."""
    made = {}
    # one token a minute: the burst below never refills while it runs, however slow it is
    for name, extra in (("alice", ["--rate-per-minute", "1"]), ("bob", [])):
        created = run_actq("keys", "create", name, *extra, env=stack.env)
        assert created.returncode == 0, created.stderr
        made[name] = {"Authorization": f"Bearer {created.stdout.decode().strip()}"}
    url = f"{stack.url}/v1/{DS['endpoint']}?fresh=1"
    assert requests.post(url, json=DS["request"], timeout=30).status_code == 401
    job_id = requests.post(url, json=DS["request"], headers=made["alice"], timeout=30).json()["id"]
    bob = requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=made["bob"], timeout=10)
    assert bob.status_code == 404
    statuses = [
        requests.get(f"{stack.url}/v1/jobs", headers=made["alice"], timeout=10).status_code
        for _ in range(25)
    ]
    assert statuses.count(200) == 19 and statuses[19:] == [429] * 6  # 1 + 19 = the burst of 20
    owner = _query(stack, "SELECT owner FROM jobs WHERE id = :id", id=job_id)
    assert owner[0][0] == "alice"
