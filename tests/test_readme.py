"""The README's examples run as written, in order, on a fresh ``actq up`` (the built-in
tiny-gpt2): every bash block marked ``<!-- example -->`` runs in one shell with ``set -e``, with
``actq`` on PATH as the README says (the activated ``.venv``), and curl failing on a 4xx/5xx. The
only change is the port: the README's ``127.0.0.1:8000`` becomes the test service's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, _base_env
from tests.stack import Stack, free_port, start_up

pytestmark = pytest.mark.slow

MARK = "<!-- example -->"
README_URL = "http://127.0.0.1:8000"


def example_blocks(text: str) -> list[str]:
    """The marked bash blocks of a Markdown text, in order."""
    pattern = re.escape(MARK) + r"\s*\n```bash\n(.*?)\n```"
    return re.findall(pattern, text, flags=re.DOTALL)


def test_the_readme_marks_its_examples():
    blocks = example_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 4
    assert any("actq compare $A $B" in b for b in blocks)


def test_the_readme_examples_run_as_written(tmp_path):
    blocks = example_blocks((REPO / "README.md").read_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _base_env(tmp_path)
    data_dir = tmp_path / "data"
    env.update(
        ACTQ_API_URL=url,  # the README's default URL, at the test's port
        PATH=str(Path(sys.executable).parent) + os.pathsep + env["PATH"],  # the activated .venv
    )
    stack = Stack(url=url, env=env, workdir=tmp_path)
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    script = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
    script += "\n".join(b.replace(README_URL, url) for b in blocks)
    try:
        start_up(stack, port, data_dir, "tiny-gpt2")
        done = subprocess.run(
            ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        stack.stop()
    said = done.stdout + done.stderr
    (tmp_path / "said.txt").write_text(said)
    assert done.returncode == 0, said[-6000:] + stack.logs()
    assert "answered from job" in done.stderr  # the CLI's first submit is a cache hit
    assert '"runs":[]' not in done.stdout.replace(" ", "")  # every filter finds the runs
    assert "loss (logit difference)" in done.stdout  # actq compare $A $B
    assert '"baseline":{"run":' in done.stdout  # B's clean twin is A
    assert '"label":"L1H0 off"' in done.stdout  # the PATCH without a Content-Type
    assert (work / "response.json").stat().st_size > 0 and (work / "engine.json").stat().st_size
