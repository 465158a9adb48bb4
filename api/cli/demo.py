"""``actq demo``: start the embedded stack, run a clean request and its ablated twin, print where
their results are and the comparison of the two (``api.cli.compare.format_summary``), stop.

The stack's own log goes to a file (shown if the stack fails; ``--verbose`` shows it as it runs),
so that what the demo prints is the demo. Its jobs stay in its data folder: the last line says
how to serve that folder and open the comparison page.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api.cli.compare import format_summary
from api.client import Client
from models.settings import DEFAULT_API_URL, Settings

PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."

CLEAN = {
    "subRequests": [
        {
            "prompt": PROMPT,
            "targetTokens": [" Germany"],
            "distractorTokens": [" France"],
            "componentTypeForMlp": "neuron",
            "componentTypeForAttention": "attention_head",
            "topAndBottomKForNodeTable": 5,
            "hideEarlyLayersWhenAblating": False,
            "nodeAblations": None,
            "upstreamNodeToTrace": None,
            "downstreamNodeToTrace": None,
        }
    ]
}


def ablated_twin(request: dict, layer: int = 1, head: int = 0, token: int = 14) -> dict:
    """The same request with one attention head zeroed at one token."""
    twin = copy.deepcopy(request)
    node = {
        "nodeType": "attention_head",
        "tensorIndices": [token, 0, head],
        "layerIndex": layer,
        "passType": "forward",
    }
    twin["subRequests"][0]["nodeAblations"] = [{"nodeIndex": node, "value": 0.0}]
    return twin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(client: Client, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"actq up exited with code {process.returncode}")
        try:
            client.health()
            return
        except Exception:
            time.sleep(0.2)
    raise TimeoutError("the embedded stack did not answer in time")


def demo(data_dir: str | None, model: str | None, port: int = 0, verbose: bool = False) -> int:
    port = port or free_port()
    data = Path(data_dir).expanduser().resolve() if data_dir else Settings().data_path().resolve()
    command = [sys.executable, "-m", "api.cli", "up", "--port", str(port), "--data-dir", str(data)]
    if model:
        command += ["--model", model]
    if verbose:
        command.append("--verbose")
    log = None if verbose else tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)
    client = Client(f"http://127.0.0.1:{port}", timeout=60)
    try:
        try:
            wait_healthy(client, process)
        except (RuntimeError, TimeoutError):
            _show(log)
            raise
        clean = client.submit("batched_tdb", CLEAN, label="demo: clean", tags=["demo"])
        twin = client.submit(
            "batched_tdb", ablated_twin(CLEAN), label="demo: ablated", tags=["demo"]
        )
        for name, job in (("clean", clean), ("ablated", twin)):
            final = client.wait(job["id"], timeout=600)
            loss = final["runs"][0]["loss"] if final["runs"] else None
            print(f"{name:8} {final['status']:8} loss {loss}  {client.url}{job['resultUrl']}")
        a, b = f"{clean['id']}/0", f"{twin['id']}/0"
        print(f"runs to compare: {a} and {b}\n")
        result = client.compare(a, b)
        print(format_summary(result, top=5))
        up = f"actq up --data-dir {data}" + (f" --model {model}" if model else "")
        print(
            f"(the demo's stack stops now; to look at these runs, `{up}` and open "
            f"{DEFAULT_API_URL}/compare?a={a}&b={b})"
        )
        return 0
    finally:
        process.terminate()
        process.wait(30)
        if log is not None:
            log.close()


def _show(log) -> None:
    """The tail of the stack's log, when it failed to start."""
    if log is None:
        return
    log.seek(0)
    print(log.read().decode(errors="replace")[-4000:], file=sys.stderr)
