"""Answers in arrival order per client on the TDB routes (``api.tdb_order``), on the real stack.

The two sequences of TDB's UI that showed stale results are replayed over HTTP, with the UI's
pauses between the requests, against PostgreSQL, Redis, the API under gunicorn (two processes)
and a worker that the test starts only once the later request is in line: so the earlier job
cannot finish before the later answer is ready, and an answer sent out of order is caught every
time (the test asserts, when the later answer arrives, that the earlier job is already final).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from api.tdb_order import KEY_PREFIX, MemoryTurns, client_key
from tests.conftest import REPO, _base_env, _create_pg_database, _drop_pg_database, run_actq
from tests.stack import Stack, free_port, healthy, wait_until, worker_ready

CLEAN = json.loads((REPO / "examples" / "batched_tdb.json").read_text())
ABLATED = json.loads((REPO / "examples" / "batched_tdb_ablated.json").read_text())
INVALID_PAIR = {
    "subRequests": [
        {**CLEAN["subRequests"][0], "targetTokens": [" Germany and"], "prompt": "Paris is"},
    ]
}
UI = "http://localhost:1234"
OTHER_UI = "http://localhost:5678"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_server_url, redis_url, golden_model_dir):
    """PostgreSQL, Redis (its own database), two gunicorn processes; workers started by tests."""
    import redis

    workdir = tmp_path_factory.mktemp("tdb-order")
    name, db = _create_pg_database(pg_server_url)
    broker = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = _base_env(workdir)
    env.update(ACTQ_DATABASE_URL=db, ACTQ_BROKER_URL=broker, ACTQ_MODEL=str(golden_model_dir))
    assert run_actq("db", "upgrade", env=env).returncode == 0
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.redis = redis.Redis.from_url(broker)
    try:
        stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        yield stack
    finally:
        stack.stop()
        _drop_pg_database(pg_server_url, name)


def start_worker(stack: Stack):
    worker = stack.add(f"worker{len(stack.processes)}", "worker", "--pool", "solo")
    wait_until(lambda: worker_ready(worker), 180, "worker", stack)
    return worker


class Sent:
    """One request of the UI, sent in its own thread on its own connection."""

    def __init__(self, stack: Stack, body: dict, origin: str = UI, on_answer=None):
        self.stack, self.body, self.origin, self.on_answer = stack, body, origin, on_answer
        self.response: requests.Response | None = None
        self.seen_at_answer = None
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        with requests.Session() as session:
            self.response = session.post(
                f"{self.stack.url}/batched_tdb",
                json=self.body,
                headers={"Origin": self.origin},
                timeout=600,
            )
        if self.on_answer is not None:
            self.seen_at_answer = self.on_answer()

    def answer(self, timeout: float = 600) -> requests.Response:
        self.thread.join(timeout)
        assert self.response is not None, "no answer"
        return self.response


def tickets_taken(stack: Stack, origin: str) -> int:
    key = KEY_PREFIX + client_key(origin, "127.0.0.1", "") + ":next"
    return int(stack.redis.get(key) or 0)


def jobs(stack: Stack, **filters) -> list[dict]:
    response = requests.get(f"{stack.url}/v1/jobs", params=filters, timeout=30)
    return response.json()["jobs"]


def job_status(stack: Stack, job_id: str) -> str:
    return requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=30).json()["status"]


def test_invalid_pair_after_a_slow_copy_is_answered_after_it(stack):
    """Scenario (a): "Add second prompt" sends a copy of the left prompt, then an invalid pair
    0.04 s later; the invalid pair's 400 must not arrive before the copy's answer. Meanwhile
    another client (another UI origin) is answered at once: clients do not wait for each other."""
    before = tickets_taken(stack, UI)
    copy = Sent(stack, CLEAN)
    wait_until(lambda: jobs(stack, status="queued"), 60, "the copy's job", stack)
    copy_job = jobs(stack, status="queued")[0]["id"]
    time.sleep(0.04)  # the UI's pause between the two requests
    invalid = Sent(stack, INVALID_PAIR, on_answer=lambda: job_status(stack, copy_job))
    wait_until(lambda: tickets_taken(stack, UI) == before + 2, 60, "the pair in line", stack)

    other = Sent(stack, INVALID_PAIR, origin=OTHER_UI)
    other_answer = other.answer(120)
    assert other_answer.status_code >= 400 and other_answer.json()["message"]
    assert copy.response is None and invalid.response is None  # no worker yet: both wait

    worker = start_worker(stack)
    try:
        assert copy.answer().status_code == 200
        answer = invalid.answer()
        assert 400 <= answer.status_code < 500
        assert answer.json()["message"]
        assert answer.headers["Access-Control-Allow-Origin"] == UI
        assert invalid.seen_at_answer == "finished"  # the copy was answered first
    finally:
        worker.stop()


def test_cached_clean_answer_waits_for_the_ablated_pair_sent_before_it(stack):
    """Scenario (b): ablate, then remove the ablation at once: the clean answer is a cache hit
    (ready in milliseconds) but must arrive after the ablated pair's (seconds)."""
    worker = start_worker(stack)
    try:  # the clean request's answer is in the store (the UI showed it before ablating)
        warm = requests.post(f"{stack.url}/batched_tdb", json=CLEAN, timeout=600)
        assert warm.status_code == 200
    finally:
        worker.stop()
    ablated = Sent(stack, ABLATED)
    wait_until(
        lambda: jobs(stack, status="queued", hasAblations="true"), 60, "the ablated job", stack
    )
    ablated_job = jobs(stack, status="queued", hasAblations="true")[0]["id"]
    time.sleep(0.06)
    clean = Sent(stack, CLEAN, on_answer=lambda: job_status(stack, ablated_job))
    worker = start_worker(stack)
    try:
        ablated_body = ablated.answer().json()
        clean_answer = clean.answer()
        assert clean_answer.status_code == 200
        assert clean.seen_at_answer == "finished"
        assert clean_answer.json() == warm.json()
        assert ablated_body != warm.json()
    finally:
        worker.stop()


def test_memory_turns_release_answers_in_ticket_order():
    """The embedded mode's tickets: later answers wait for earlier ones of the same client only."""
    turns = MemoryTurns()
    first, second = turns.take("a"), turns.take("a")
    other = turns.take("b")
    assert turns.wait_turn("b", other, 0)  # another client is not held back
    assert not turns.wait_turn("a", second, 0.01)
    released = threading.Event()

    def later():
        turns.wait_turn("a", second, 30)
        released.set()

    thread = threading.Thread(target=later)
    thread.start()
    assert not released.wait(0.05)
    turns.close("a", first)
    thread.join(30)
    assert released.is_set()
    turns.close("a", second)
    assert turns.wait_turn("a", turns.take("a"), 0)
