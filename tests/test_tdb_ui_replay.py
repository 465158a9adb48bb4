"""What TDB's unmodified UI sent to ``actq up`` in Chromium, replayed over HTTP.

``tests/tdb_ui_recording.json`` holds the requests ``scripts/tdb_ui_check.py`` recorded (CI can
fetch neither TDB nor npm, so the browser run is manual): the welcome page, the TDB page's
renders with the node table's ``/explain`` bursts, the neuron and head pages with a prompt run
(``normalizeActivationsUsingNeuronRecord``). They are sent again with the UI's ``Origin``, in
the recorded order and spacing (pauses longer than a second, where the UI waited for a person or
for an answer, are cut to one), several in flight at once as the browser had them, against
``actq up`` on the golden model after a records job and one attached explanation, as in the
browser. Every answer must have CORS and the status the UI can use: 200, and for ``/explain`` a
501 with TDB's ``message`` only for a node nobody explained.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

RECORDING = json.loads((Path(__file__).parent / "tdb_ui_recording.json").read_text())
ORIGIN = RECORDING["origin"]
EXPLAINED = RECORDING["explained"]
CORPUS = "\n".join(
    [
        "Paris is the capital of France, and Ottawa is the capital of Canada.",
        "The river runs through the old city, past the music hall and the cathedral.",
        "In the first year of the war the team moved to a new state by the river.",
        "She wrote music for film and theatre, and her first album came out in Paris.",
    ]
)
READ_SHAPES = {
    "/neuron_record": ["dataset", "maxActivation", "topActivations", "randomSample"],
    "/attention_head_record": [
        "dataset",
        "maxAttentionActivation",
        "mostPositiveTokenSequences",
        "randomTokenSequences",
    ],
}


def _schedule(rows: list[dict]) -> list[float]:
    """Send times: the recorded spacing, with pauses over a second cut to one."""
    times, at, last = [], 0.0, None
    for row in rows:
        if last is not None:
            at += min(row["start"] - last, 1.0)
        times.append(at)
        last = row["start"]
    return times


@pytest.fixture(scope="module")
def replayed(embedded_stack):
    url = embedded_stack.url
    body = {"corpus": CORPUS, "corpusName": "ui.txt", "seqLen": 16, "topK": 3, "randomK": 2}
    submitted = requests.post(f"{url}/v1/records", json=body, timeout=60)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + 300
    while (view := requests.get(url + submitted.json()["url"], timeout=30).json())["status"] in (
        "queued",
        "started",
    ):
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    assert view["status"] == "finished", view
    node = f"{EXPLAINED['dst']}/{EXPLAINED['layerIndex']}/{EXPLAINED['activationIndex']}"
    put = requests.put(
        f"{url}/v1/nodes/{node}/explanation",
        json={"explanation": EXPLAINED["explanation"], "score": EXPLAINED["score"]},
        timeout=30,
    )
    assert put.status_code == 200, put.text
    rows = RECORDING["requests"]
    answers: list[dict | None] = [None] * len(rows)
    start = time.monotonic()

    def send(i: int, at: float) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        row = rows[i]
        headers = {"Origin": ORIGIN}
        data = None
        if row["body"] is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(row["body"])
        response = requests.post(url + row["path"], data=data, headers=headers, timeout=300)
        answers[i] = {"status": response.status_code, "headers": response.headers}
        answers[i]["json"] = response.json()

    threads = [threading.Thread(target=send, args=(i, at)) for i, at in enumerate(_schedule(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(360)
    return rows, answers


def _explained(body: dict) -> bool:
    return all(body.get(k) == EXPLAINED[k] for k in ("dst", "layerIndex", "activationIndex"))


def test_every_answer_the_ui_got_has_cors_and_a_usable_status(replayed):
    rows, answers = replayed
    assert all(a is not None for a in answers), "a request got no answer"
    for row, answer in zip(rows, answers, strict=True):
        where = f"{row['path']} {json.dumps(row['body'])[:200]}"
        assert answer["headers"].get("Access-Control-Allow-Origin") == ORIGIN, where
        if row["path"] in ("/explain", "/score") and not _explained(row["body"]):
            assert answer["status"] == 501, where
            assert "explainer" in answer["json"]["message"], where
        else:
            assert answer["status"] == 200, (where, answer["json"])
    paths = {row["path"] for row in rows}
    assert {"/neuron_datasets_metadata", "/neuron_record", "/attention_head_record"} <= paths


def test_the_explained_node_is_explained_and_scored_and_the_records_are_tdb_shaped(replayed):
    rows, answers = replayed
    by_path: dict[str, list[dict]] = {}
    for row, answer in zip(rows, answers, strict=True):
        by_path.setdefault(row["path"], []).append({**answer, "body": row["body"]})
    explained = [a for a in by_path["/explain"] if _explained(a["body"])]
    assert explained and explained[0]["json"]["explanations"] == [EXPLAINED["explanation"]]
    assert by_path["/score"][0]["json"]["score"] == EXPLAINED["score"]
    for path, keys in READ_SHAPES.items():
        assert list(by_path[path][0]["json"]) == keys
    listed = by_path["/neuron_datasets_metadata"][0]["json"]
    assert {d["derivedScalarType"] for d in listed} >= {"mlp_post_act", "attn_write_norm"}


def test_the_node_pages_prompt_is_normalized_by_the_records_maximum(replayed):
    rows, answers = replayed
    record = next(a for r, a in zip(rows, answers, strict=True) if r["path"] == "/neuron_record")
    run = next(
        (r, a) for r, a in zip(rows, answers, strict=True) if r["path"] == "/derived_scalars"
    )
    spec = run[0]["body"]["derivedScalarsRequestSpec"]["normalizeActivationsUsingNeuronRecord"]
    asked = next(r for r in rows if r["path"] == "/neuron_record")["body"]
    assert {k: spec[k] for k in ("dst", "layerIndex", "activationIndex")} == {
        k: asked[k] for k in ("dst", "layerIndex", "activationIndex")
    }
    largest = record["json"]["maxActivation"]
    data = run[1]["json"]["derivedScalarsResponseData"]
    expected = [max(a / (largest - 1e-5), 0.0) for a in data["activations"]]
    assert data["normalizedActivations"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
