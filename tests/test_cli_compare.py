"""``actq compare``, ``actq runs`` and ``actq demo`` against a running embedded stack.

The printed numbers are checked against the two stored TDB responses, fetched separately.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from api.charts import fmt
from api.cli.compare import format_summary
from api.client import Client
from api.comparison import compare, run_side
from tests.conftest import GOLDEN_MODEL_NAME, run_actq
from tests.runs_support import golden_pair, single

PAIR = golden_pair()
CLEAN = single(PAIR["request"], 0)
ABLATED = single(PAIR["request"], 1)


def _loss(response: dict) -> float:
    return response["inferenceSubResponses"][0]["inferenceResponse"]["inferenceAndTokenData"][
        "loss"
    ]


def _finished(client: Client, request: dict, **kwargs) -> str:
    job = client.submit("batched_tdb", request, **kwargs)
    assert client.wait(job["id"], timeout=300)["status"] == "finished"
    return job["id"]


def _out(done) -> str:
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


def test_summary_prints_the_loss_change_then_the_nodes_that_moved_most():
    a = run_side(
        "J/0", "batched_tdb", GOLDEN_MODEL_NAME, None, PAIR["request"], PAIR["response"], 0
    )
    b = run_side(
        "J/1", "batched_tdb", GOLDEN_MODEL_NAME, None, PAIR["request"], PAIR["response"], 1
    )
    result = compare(a, b) | {"page": "/compare?a=J/0&b=J/1"}
    text = format_summary(result, "http://host", top=3).splitlines()
    losses = [
        s["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        for s in PAIR["response"]["inferenceSubResponses"]
    ]
    loss_line = f"loss (logit difference)  {fmt(losses[0])} -> {fmt(losses[1])} ({fmt(losses[1] - losses[0], True)})"
    assert loss_line in text
    assert "    b attention_head:1:14,*,0 = 0.0" in text and "    a none" in text
    start = text.index(next(t for t in text if t.startswith("nodes that moved most")))
    assert text.index(loss_line) < start
    first = result["nodeTables"][0]["rows"][0]
    assert text[start + 1] == f"  {first['label']}"
    values = first["values"]["write_norm"]
    assert (
        f"write_norm {fmt(values['a'])} -> {fmt(values['b'])} ({fmt(values['delta'], True)})"
        in text[start + 2]
    )
    assert text[-1] == "page: http://host/compare?a=J/0&b=J/1"


def test_actq_compare_two_runs(embedded_stack):
    client = Client(embedded_stack.url, timeout=60)
    clean = _finished(client, CLEAN, label="cmp clean")
    ablated = _finished(client, ABLATED, label="cmp ablated")
    losses = [_loss(client.result_json(j)) for j in (clean, ablated)]
    out = _out(run_actq("compare", clean, f"{ablated}/0", env=embedded_stack.env))
    assert f"a  {clean}/0  batched_tdb on {GOLDEN_MODEL_NAME} (finished)  'cmp clean'" in out
    expected = f"{fmt(losses[0])} -> {fmt(losses[1])} ({fmt(losses[1] - losses[0], True)})"
    assert f"loss (logit difference)  {expected}" in out
    assert "only in a's top-k" in out  # separate jobs: the top-k lists differ
    assert f"page: {embedded_stack.url}/compare?a={clean}/0&b={ablated}/0" in out
    result = json.loads(
        _out(run_actq("compare", clean, ablated, "--json", "--only-diff", env=embedded_stack.env))
    )
    assert result["loss"] == {"a": losses[0], "b": losses[1], "delta": losses[1] - losses[0]}
    assert [s["name"] for s in result["settings"]] == ["ablations"]
    missing = run_actq("compare", clean, "nosuchjob/0", env=embedded_stack.env)
    assert missing.returncode == 1 and "no job 'nosuchjob'" in missing.stderr.decode()


def test_actq_compare_baseline_submits_the_clean_twin_once(embedded_stack):
    client = Client(embedded_stack.url, timeout=60)
    request = copy.deepcopy(ABLATED)
    request["subRequests"][0]["prompt"] = (
        "Rome is the capital of Italy, and Madrid is the capital of Spain."
    )
    request["subRequests"][0]["targetTokens"] = [" Spain"]
    request["subRequests"][0]["distractorTokens"] = [" Italy"]
    ablated = _finished(client, request, tags=["baseline-test"])
    first = run_actq("compare", ablated, "--baseline", env=embedded_stack.env)
    out = _out(first)
    assert "submitting its clean twin" in first.stderr.decode()
    twin = client.baseline(ablated)["baseline"]
    assert twin["label"] == f"baseline of {ablated}/0" and twin["hasAblations"] is False
    assert f"a  {twin['run']}  batched_tdb" in out and f"b  {ablated}/0  batched_tdb" in out
    again = run_actq("compare", f"{ablated}/0", "--baseline", env=embedded_stack.env)
    assert "submitting" not in again.stderr.decode()
    assert f"a  {twin['run']}" in _out(again)
    runs = _out(run_actq("runs", "--tag", "baseline-test", env=embedded_stack.env)).splitlines()
    assert [line.split()[0] for line in runs[1:]] == [twin["run"], f"{ablated}/0"]
    assert "attention_head:1:14,*,0" in runs[2]
    ablated_only = _out(
        run_actq("runs", "--tag", "baseline-test", "--ablated", "--json", env=embedded_stack.env)
    )
    assert [r["run"] for r in json.loads(ablated_only)["runs"]] == [f"{ablated}/0"]


def test_actq_demo_prints_the_comparison(tmp_path, golden_model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(ACTQ_DEVICE="cpu", OMP_NUM_THREADS="1", ACTQ_DATA_DIR=str(tmp_path / "home"))
    done = run_actq(
        "demo", "--data-dir", str(tmp_path / "demo"), "--model", str(golden_model_dir), env=env
    )
    out = _out(done)
    assert "runs to compare:" in out
    assert "loss (logit difference)  " in out and "nodes that moved most" in out
    assert "    b attention_head:1:14,*,0 = 0.0" in out
    pages = [line for line in out.splitlines() if line.startswith("page: /compare?a=")]
    assert len(pages) == 1
    a, b = out.split("runs to compare: ", 1)[1].split("\n", 1)[0].split(" and ")
    link = f"actq up --data-dir {tmp_path / 'demo'} --model {golden_model_dir}` and open "
    assert f"{link}http://127.0.0.1:8000/compare?a={a}&b={b})" in out
    said = out + done.stderr.decode()
    # the embedded stack's own log is kept out of the demo's output (``--verbose`` shows it)
    assert "GET /healthz" not in said and "celery@" not in said and "SecurityWarning" not in said


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "X"], "compare needs two runs"),
        (["compare", "X", "Y", "--baseline"], "--baseline takes one run"),
    ],
)
def test_actq_compare_needs_two_runs_or_a_baseline(args, message):
    done = run_actq("--url", "http://127.0.0.1:9", *args)
    assert done.returncode == 1 and message in done.stderr.decode()
