"""The pages in a real browser: headless Chromium loads /runs, a run and /compare from a running
server, the chart must be in the DOM it built, and the screenshots are kept under
``test-artifacts/`` (git-ignored) for a person to look at.

Debian's ``chromium`` package is installed by ``.ci/run``; without it these tests are skipped
(and fail under CI, which must run everything).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest

from tests.conftest import REPO
from tests.runs_support import golden_pair, store_finished

ARTIFACTS = REPO / "test-artifacts"
PAIR = golden_pair()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser tests")
        pytest.skip(message)
    return found


@pytest.fixture
def server(app):
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(10)
    srv.server_close()


def browse(url: str, tmp_path, *, screenshot: str | None = None) -> str:
    """Load ``url`` headless; returns the DOM Chromium built (or writes a screenshot)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,900",
    ]
    if screenshot:
        ARTIFACTS.mkdir(exist_ok=True)
        command.append(f"--screenshot={ARTIFACTS / screenshot}")
    else:
        command.append("--dump-dom")
    done = subprocess.run(command + [url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_compare_page_draws_its_chart_in_chromium(server, app_sessions, tmp_path):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"], label="golden pair")
    url = f"{server}/compare?a={job}/0&b={job}/1"
    dom = browse(url, tmp_path)
    assert dom.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 2
    bars = re.findall(r'<g class="bar (pos|neg)">', dom)
    assert len(bars) == 1 + 15  # the loss change and the 15 nodes that moved most
    assert re.search(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+"', dom)
    assert "Nodes that moved most" in dom and "Per token: act_times_grad" in dom
    assert "logit of the target token minus the logit of the" in dom  # what the loss is
    assert "b lower than a" in dom  # the heat table's legend
    assert "<code>attention_head:1:14,*,0 = 0</code>" in dom  # ablations as keys
    path = ARTIFACTS / "compare.png"
    path.unlink(missing_ok=True)
    browse(url, tmp_path, screenshot="compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_and_run_pages_render_in_chromium(server, app_sessions, tmp_path):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"], tags=["demo"])
    dom = browse(f"{server}/runs", tmp_path)
    assert f'href="/runs/{job}/1"' in dom and f'href="/runs/{job}/0"' in dom
    assert 'class="badge ablated"' in dom and '<td class="id">' in dom
    run = browse(f"{server}/runs/{job}/1", tmp_path)
    assert f'href="/compare?a={job}/0&amp;b={job}/1"' in run
    assert "Top output tokens" in run and "Node table: top" in run and "Job record" in run
    assert "computed by this job" in run and re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run)
    for name, url in (("runs.png", f"{server}/runs"), ("run.png", f"{server}/runs/{job}/1")):
        browse(url, tmp_path, screenshot=name)
        assert (ARTIFACTS / name).stat().st_size > 0
