"""A records job survives its worker being killed mid-job: on the fault stack of
``tests/test_faults.py`` (two prefork workers, a 4 s lease, half-second reaper sweeps, debug
delays), a set named ``debug-delay=1`` sleeps a second before each batch; its worker is killed
with SIGKILL once the set has progress, and the other worker's reaper sends it back to ``queued``
and publishes it again: it is built once, by attempt 2, and its records are served."""

# ruff: noqa: F811  (the fixtures of test_faults, imported by name, are parameters here)
from __future__ import annotations

import time

import pytest
import requests

from tests.stack import wait_until
from tests.test_faults import _holder, _query, _start_worker, api, services, stack  # noqa: F401

pytestmark = pytest.mark.slow

CORPUS = "\n".join(
    f"Document {i}: the river runs past the city of Paris, and the team moves north." * 2
    for i in range(24)
)


def _view(stack, set_id: str) -> dict:
    return requests.get(f"{stack.url}/v1/records/{set_id}", timeout=10).json()


def _poll(stack, set_id: str, done, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = _view(stack, set_id)
        if done(view):
            return view
        time.sleep(0.1)
    raise TimeoutError(f"record set {set_id}: {_view(stack, set_id)}\n{stack.logs()}")


def test_a_records_job_whose_worker_is_killed_is_built_once_by_the_other(stack):
    body = {"corpus": CORPUS, "name": "debug-delay=1", "seqLen": 8, "topK": 2, "randomK": 1}
    submitted = requests.post(f"{stack.url}/v1/records", json=body, timeout=30)
    assert submitted.status_code == 202, submitted.text
    set_id = submitted.json()["id"]
    _poll(stack, set_id, lambda v: v["status"] == "started" and v["progress"]["sequences"] > 0)
    worker = _query(stack, "SELECT worker FROM record_sets WHERE id = :id", id=set_id)[0][0]
    victim = _holder(stack, {"worker": worker})
    victim.kill()  # SIGKILL mid-job, the set half built
    final = _poll(stack, set_id, lambda v: v["status"] not in ("queued", "started"), 180)
    assert final["status"] == "finished", final
    assert final["attempts"] == 2
    assert final["progress"]["sequences"] == final["progress"]["of"]
    again = _query(stack, "SELECT worker FROM record_sets WHERE id = :id", id=set_id)[0][0]
    assert _holder(stack, {"worker": again}) is not victim
    stored = _query(
        stack, "SELECT count(*) FROM node_records WHERE record_set_id = :id", id=set_id
    )[0][0]
    assert stored > 0
    node = {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 3, "datasets": [set_id]}
    record = requests.post(f"{stack.url}/neuron_record", json=node, timeout=30)
    assert record.status_code == 200 and len(record.json()["topActivations"]) == 2
    logs = "".join(p.log() for n, p in stack.processes.items() if n.startswith("w"))
    wait_until(lambda: f"Record set {set_id}: stored" in logs, 30, "the stored log line", stack)
    assert logs.count(f"Record set {set_id}: stored") == 1
    _start_worker(stack, next(n for n, p in stack.processes.items() if p is victim))
