"""Node records: built incrementally (against a brute-force pass and the engine's own attention
write norms), stored by a records job, served by TDB's read routes in TDB's shape, used by
``normalizeActivationsUsingNeuronRecord``; explanations; and a records job over HTTP on
``actq up`` through ``actq records build``."""

from __future__ import annotations

import json
import re

import pytest
import requests
import torch

from models.store.tables import RecordSet
from tests.conftest import OK_CASES, run_actq
from worker.engine.records import RecordBuilder
from worker.execution import execute_job
from worker.records import execute_records, sequences_of

CORPUS = "\n".join(
    [
        "Paris is the capital of France, and Berlin is the capital of Germany.",
        "The quick brown fox jumps over the lazy dog.",
        '{"text": "Once upon a time there was a small model that read many documents."}',
        "",
        "One two three four five six seven eight nine ten eleven twelve thirteen.",
        "Rome, Madrid and Lisbon are cities in the south of Europe.",
    ]
)
DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
UI = {"Origin": "http://localhost:1234"}


def test_incremental_top_sequences_equal_a_brute_force_pass(engine_model):
    sequences = sequences_of(engine_model.tokenizer, CORPUS, 8)
    builder = RecordBuilder(engine_model, ["mlp_neuron", "attention_head"], 3, 8)
    for start in range(0, len(sequences), 2):  # small batches: many merges
        batch = sequences[start : start + 2]
        builder.add_batch(batch, list(range(start, start + len(batch))))
    whole = RecordBuilder(engine_model, ["mlp_neuron", "attention_head"], 3, 8)
    for kind, layer, acts, valid in whole._layers(sequences):
        best = acts.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=2)  # [S, nodes]
        expected = best.topk(3, dim=0)
        top = builder.tops[(kind.name, layer)]
        assert torch.allclose(top.scores, expected.values, atol=1e-6)
        # each kept sequence is one whose own score is the kept one (ties may pick either)
        assert torch.allclose(best.gather(0, top.ids), top.scores, atol=1e-6)
        assert (top.ids == expected.indices).float().mean() > 0.9


def test_head_records_are_the_engines_attention_write_norms(engine_model):
    from worker.engine import run

    prompt = "Paris is the capital of France"
    tokens = engine_model.tokenizer.encode(prompt)
    builder = RecordBuilder(engine_model, ["attention_head"], 1, len(tokens))
    builder.add_batch([tokens], [0])
    node = next(n for n in builder.results({0: len(tokens)}, {}) if (n.layer, n.index) == (1, 2))
    request = {
        "inferenceRequestSpec": {"prompt": prompt, "ablationSpecs": []},
        "derivedAttentionScalarsRequestSpec": {
            "dst": "unflattened_attn_write_norm",
            "layerIndex": 1,
            "activationIndex": 2,
        },
    }
    answer = run("derived_attention_scalars", request, engine_model)
    rows = answer["derivedAttentionScalarsResponseData"]["tokenAndAttentionScalarsList"]
    flat = [a for row in rows for a in row["scalars"]]
    assert node.top[0][1] == pytest.approx(flat, rel=1e-4, abs=1e-6)


@pytest.fixture
def built(app, engine_model):
    """A records job on the corpus, submitted over HTTP and run by the worker's function."""
    client = app.test_client()
    body = {"corpus": CORPUS, "corpusName": "c.txt", "topK": 3, "randomK": 2, "seqLen": 16}
    response = client.post("/v1/records", json=body)
    assert response.status_code == 202, response.get_json()
    set_id = response.get_json()["id"]
    sessions = app.extensions["actq.sessionmaker"]
    status = execute_records(
        sessions, set_id, model=lambda: engine_model, worker="w", lease_seconds=60, max_attempts=3
    )
    assert status == "finished"
    view = client.get(f"/v1/records/{set_id}").get_json()
    assert view["status"] == "finished" and view["progress"]["sequences"] == view["progress"]["of"]
    return client, view


def test_records_job_rejects_bad_input(app):
    client = app.test_client()
    assert client.post("/v1/records", json={"corpus": "x", "kinds": ["x"]}).status_code == 422
    latent = client.post("/v1/records", json={"corpus": "x", "kinds": ["mlp_autoencoder_latent"]})
    assert latent.status_code == 422 and latent.get_json()["error"]["path"] == "kinds.0"
    long = client.post("/v1/records", json={"corpus": "x", "seqLen": 100000})
    assert long.get_json()["error"]["path"] == "seqLen"


def test_read_routes_answer_tdb_shaped_records(built, engine_model):
    client, view = built
    datasets = client.post("/neuron_datasets_metadata", headers=UI).get_json()
    assert {d["derivedScalarType"] for d in datasets} == {"mlp_post_act", "attn_write_norm"}
    short = datasets[0]["shortName"]
    assert short == view["dataset"] == engine_model.name
    assert list(datasets[0]) == [
        "shortName",
        "derivedScalarType",
        "userVisibleName",
        "neuronDatasetPath",
    ]
    node = {"dst": "mlp_post_act", "layerIndex": 1, "activationIndex": 5, "datasets": [short]}
    response = client.post("/neuron_record", json=node, headers=UI)
    assert response.headers["Access-Control-Allow-Origin"] == UI["Origin"]
    record = response.get_json()
    assert list(record) == ["dataset", "maxActivation", "topActivations", "randomSample"]
    assert len(record["topActivations"]) == 3 and len(record["randomSample"]) == 2
    top = record["topActivations"][0]
    assert max(t["scalar"] for t in top) == pytest.approx(record["maxActivation"])
    assert max(t["normalizedScalar"] for t in top) == pytest.approx(1.0, rel=1e-3)
    assert "".join(t["token"] for t in top) in CORPUS
    head = {**node, "dst": "attn_write_norm", "activationIndex": 1}
    record = client.post("/attention_head_record", json=head, headers=UI).get_json()
    assert list(record) == [
        "dataset",
        "maxAttentionActivation",
        "mostPositiveTokenSequences",
        "randomTokenSequences",
    ]
    first = record["mostPositiveTokenSequences"][0]
    assert [len(t["scalars"]) for t in first] == list(range(1, len(first) + 1))
    assert max(max(t["scalars"]) for t in first) == pytest.approx(record["maxAttentionActivation"])
    missing = client.post("/neuron_record", json={**node, "datasets": ["nope"]}, headers=UI)
    assert missing.status_code == 404 and missing.get_json()["message"]


def test_explanations_are_served_and_explain_is_a_clear_501(built, engine_model):
    """/explain and /score answer attached explanations (what TDB's node table asks for each row,
    seen in Chromium) and a 501 for a node nobody explained."""
    client, view = built
    put = client.put("/v1/nodes/mlp_post_act/1/5/explanation", json={"explanation": "cities"})
    assert put.status_code == 200
    asked = {
        "dst": "mlp_post_act",
        "layerIndex": 1,
        "activationIndex": 5,
        "explanationDatasets": [],
        "neuronDataset": view["dataset"],
    }
    answer = client.post("/existing_explanations", json=asked, headers=UI).get_json()
    assert answer == [{"explanation": "cities", "score": None, "datasetName": view["dataset"]}]
    other = client.post("/existing_explanations", json={**asked, "activationIndex": 6})
    assert other.get_json() == []
    both = client.post("/existing_explanations", json={**asked, "explanationDatasets": ["x"]})
    assert both.status_code == 400 and both.get_json()["message"]
    node = {"dst": "mlp_post_act", "layerIndex": 1, "activationIndex": 5, "datasets": ["x"]}
    for path, body in (("/explain", node), ("/score", {**node, "explanation": "e"})):
        response = client.post(path, json=body, headers=UI)
        assert response.status_code == 501
        assert "explainer" in response.get_json()["message"]
        assert response.headers["Access-Control-Allow-Origin"] == UI["Origin"]
    node["datasets"] = [view["dataset"]]
    explained = client.post("/explain", json=node, headers=UI)
    assert explained.status_code == 200
    assert explained.get_json() == {"explanations": ["cities"], "dataset": view["dataset"]}
    unscored = client.post("/score", json={**node, "explanation": "cities"}, headers=UI)
    assert unscored.get_json() == {"score": None, "datasetPath": view["dataset"]}
    client.put("/v1/nodes/mlp_post_act/1/5/explanation", json={"explanation": "c", "score": 0.5})
    scored = client.post("/score", json={**node, "explanation": "c"}, headers=UI).get_json()
    assert scored == {"score": 0.5, "datasetPath": view["dataset"]}
    assert client.post("/score", json={**node, "explanation": "e"}).status_code == 501
    nobody = client.post("/explain", json={**node, "activationIndex": 6}, headers=UI)
    assert nobody.status_code == 501


def test_normalizing_by_a_record_uses_its_maximum(built, app, engine_model):
    client, view = built
    node = {"dst": "mlp_post_act", "layerIndex": 1, "activationIndex": 5}
    request = json.loads(json.dumps(DS["request"]))
    request["derivedScalarsRequestSpec"].update(
        layerIndex=1,
        activationIndex=5,
        dst="mlp_post_act",
        normalizeActivationsUsingNeuronRecord={**node, "datasets": [view["dataset"]]},
    )
    missing = json.loads(json.dumps(request))
    missing["derivedScalarsRequestSpec"]["normalizeActivationsUsingNeuronRecord"]["datasets"] = [
        "nope"
    ]
    refused = client.post("/derived_scalars", json=missing)
    assert refused.status_code == 404 and refused.get_json()["message"]
    job = client.post("/v1/derived_scalars", json=request).get_json()["id"]
    sessions = app.extensions["actq.sessionmaker"]
    assert execute_job(sessions, job, model=lambda: engine_model, worker="w") == "finished"
    data = client.get(f"/v1/jobs/{job}/result").get_json()["derivedScalarsResponseData"]
    record = client.post("/neuron_record", json={**node, "datasets": [view["dataset"]]})
    peak = record.get_json()["maxActivation"]
    assert data["normalizedActivations"] == pytest.approx(
        [max(a, 0.0) / peak for a in data["activations"]]
    )


def test_records_build_over_http_on_actq_up(embedded_stack, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    done = run_actq(
        "records",
        "build",
        str(corpus),
        "--url",
        embedded_stack.url,
        "--top-k",
        "2",
        "--random-k",
        "1",
        "--seq-len",
        "16",
        env=embedded_stack.env,
    )
    assert done.returncode == 0, done.stderr.decode()
    view = json.loads(done.stdout)
    assert view["status"] == "finished" and "sequences" in done.stderr.decode()
    node = {"dst": "attn_write_norm", "layerIndex": 0, "activationIndex": 0}
    record = requests.post(
        f"{embedded_stack.url}/attention_head_record",
        json={**node, "datasets": [view["dataset"]]},
        headers=UI,
        timeout=60,
    )
    assert record.status_code == 200
    assert len(record.json()["mostPositiveTokenSequences"]) == 2


def test_a_duplicate_message_claims_nothing(app, engine_model, built):
    _, view = built
    sessions = app.extensions["actq.sessionmaker"]
    again = execute_records(
        sessions,
        view["id"],
        model=lambda: engine_model,
        worker="w2",
        lease_seconds=60,
        max_attempts=3,
    )
    assert again is None
    with sessions() as session:
        assert session.get(RecordSet, view["id"]).worker == "w"


def test_run_and_compare_pages_link_nodes_to_their_records(built, app):
    from tests.runs_support import golden_pair, store_finished

    client, view = built
    pair = golden_pair()
    job = store_finished(app.extensions["actq.sessionmaker"], pair["request"], pair["response"])
    page = client.get(f"/compare?a={job}/0&b={job}/1").get_data(as_text=True)
    links = re.findall(r'href="(/records/[^"]+)"', page)
    assert links, "no node of the table links to its record"
    run_page = client.get(f"/runs/{job}/0").get_data(as_text=True)
    run_links = re.findall(r'href="(/records/[^"]+)"', run_page)
    assert run_links, "no node of the run page's table links to its record"
    # a node links only when its record exists: the heads and neurons of the table, not more
    rows = re.findall(r'<td class="node">(.*?)</td>', run_page)
    assert len(run_links) == sum("/records/" in r for r in rows) <= len(rows)
    for link in set(run_links):
        assert client.get(link.replace("&amp;", "&")).status_code == 200
    record_page = client.get(links[0].replace("&amp;", "&"))
    assert record_page.status_code == 200
    assert "Top sequences" in record_page.get_data(as_text=True)
    assert client.get("/records/mlp_post_act/0/0?model=nope").status_code == 404
