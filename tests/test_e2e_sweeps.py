"""A sweep on the real stack (gunicorn API, two ``actq worker`` processes, PostgreSQL, Redis),
from ``actq sweep``: every point is a run that ``actq compare POINT --baseline`` explains, whose
stored response equals the same request submitted alone as a single job; the page and the CSV
are there; a cancel stops the remaining points."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from api.client import Client
from tests.conftest import REPO, assert_same_response, run_actq, strip_timing

REQUEST = REPO / "examples" / "batched_tdb.json"


def _sweep(url: str, sweep_id: str, until, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = requests.get(f"{url}/v1/sweeps/{sweep_id}", timeout=30).json()
        if until(view) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swept(full_stack) -> dict:
    done = run_actq(
        "sweep", str(REQUEST), "--heads", "all", "--url", full_stack.url, env=full_stack.env
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = done.stdout.decode()
    page = re.search(r"^page: (\S+)/sweeps/(\w+)$", out, re.M)
    assert page and page.group(1) == full_stack.url, out
    view = requests.get(f"{full_stack.url}/v1/sweeps/{page.group(2)}", timeout=30).json()
    return {"out": out, "view": view, "stderr": done.stderr.decode()}


def test_actq_sweep_prints_progress_the_top_cells_and_the_page(swept):
    view = swept["view"]
    assert view["status"] == "finished"
    assert view["progress"] == {"done": 12, "of": 12, "finished": 12, "failed": 0, "canceled": 0}
    assert "12/12 points" in swept["stderr"]
    moved = sorted(view["points"], key=lambda p: -abs(p["lossChange"]))
    top = [line for line in swept["out"].splitlines() if line.startswith("attention_head")]
    assert len(top) == 10
    assert top[0].split()[-1] == moved[0]["run"]


def test_each_point_equals_its_request_alone_and_compares_with_the_baseline(full_stack, swept):
    api = Client(full_stack.url, timeout=60)
    view = swept["view"]
    for point in view["points"][::5]:
        job_id = point["run"].split("/")[0]
        job = api.status(job_id)
        assert f"sweep:{view['id']}" in job["tags"] and job["status"] == "finished"
        request = requests.get(f"{full_stack.url}/v1/runs/{point['run']}", timeout=30).json()
        alone = api.submit("batched_tdb", {"subRequests": [request["request"]]}, fresh=True)
        assert api.wait(alone["id"], timeout=300)["status"] == "finished"
        a = json.loads(api.result(alone["id"])[1])
        b = json.loads(api.result(job_id)[1])
        assert_same_response(strip_timing(b), strip_timing(a))
    point = view["points"][0]["run"]
    compared = run_actq("--url", full_stack.url, "compare", point, "--baseline", env=full_stack.env)
    assert compared.returncode == 0, compared.stderr.decode()
    text = compared.stdout.decode()
    assert "differs: ablations" in text and "loss (logit difference)" in text
    assert requests.get(f"{full_stack.url}{view['pageUrl']}", timeout=30).status_code == 200
    csv = requests.get(f"{full_stack.url}{view['csvUrl']}", timeout=30)
    assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == 13


def test_cancel_stops_the_remaining_points(full_stack):
    base = json.loads(REQUEST.read_text())
    body = {"base": base, "grid": {"heads": "all", "positions": "all"}}  # 180 points
    sweep = requests.post(f"{full_stack.url}/v1/sweeps", json=body, timeout=30).json()
    canceled = requests.post(f"{full_stack.url}/v1/sweeps/{sweep['id']}/cancel", timeout=30)
    assert canceled.status_code in (200, 202)
    view = _sweep(full_stack.url, sweep["id"], lambda v: v["status"] in ("canceled", "finished"))
    assert view["status"] == "canceled"
    view = _sweep(full_stack.url, sweep["id"], lambda v: v["progress"]["done"] == 180, 60)
    assert view["progress"]["canceled"] > 0
    assert view["progress"]["finished"] + view["progress"]["canceled"] == 180
