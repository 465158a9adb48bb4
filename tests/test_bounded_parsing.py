"""Bounded parsing on the real processes: the audit's two bodies (300,000 empty sub-requests in
0.9 MB; 30 MB of ``[1,1,...]``) are refused with a 422 naming the array, and the serving process's
memory stays where it was (its peak resident set, ``VmHWM`` in ``/proc``, grows less than 50 MB;
before this it grew by 2.3 GB and by more than 19 GB).

Both stacks: ``actq up`` (the API in the ``up`` process) and gunicorn (the API in its worker
processes) with PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

MB = 1024 * 1024
EMPTY_SUB_REQUESTS = b'{"subRequests": [' + b",".join([b"{}"] * 300_000) + b"]}"
ONES = b"[" + b",".join([b"1"] * (15 * MB - 1)) + b"]"


@pytest.fixture(params=["embedded", "gunicorn"])
def served(request):
    return request.getfixturevalue(
        "embedded_stack" if request.param == "embedded" else "full_stack"
    )


def _serving_pids(stack) -> list[int]:
    """The processes that answer HTTP: ``actq up`` itself, or gunicorn's worker processes."""
    if "up" in stack.processes:
        return [stack.processes["up"].popen.pid]
    master = stack.processes["api"].popen.pid
    return [pid for pid in _all_pids() if _parent(pid) == master]


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.parametrize(
    ("endpoint", "body", "path"),
    [
        ("batched_tdb", EMPTY_SUB_REQUESTS, "subRequests"),
        ("batched", ONES, None),
    ],
    ids=["300k-empty-sub-requests", "30MB-of-ones"],
)
def test_a_huge_array_is_refused_before_parsing_with_memory_unchanged(served, endpoint, body, path):
    pids = _serving_pids(served)
    assert pids, served.logs()
    for _ in range(2 * len(pids)):  # every serving process has answered a refused body once
        warm = requests.post(f"{served.url}/v1/{endpoint}", json={"subRequests": [{}] * 70})
        assert warm.status_code == 422, warm.text
    before = {pid: _peak_kb(pid) for pid in pids}
    response = requests.post(
        f"{served.url}/v1/{endpoint}",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert error["path"] == path
    assert "ACTQ_MAX_" in error["message"]
    grown = {pid: (_peak_kb(pid) - before[pid]) / 1024 for pid in pids}
    print(f"FIGURES bounded-parsing {endpoint} body={len(body)}B peak-growth-MB={grown}")
    assert max(grown.values()) < 50, grown
