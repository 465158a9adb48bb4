"""Sweeps through the Flask app on SQLite, run by ``worker.sweeps.execute_sweep`` in this process
with the golden model: validation (4xx naming the field), the cost bound, each point a job whose
stored response is the engine's answer to its request alone, progress, cancel, CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from models.store.tables import Job
from tests.conftest import assert_same_response, strip_timing

BASE = json.loads((Path(__file__).parents[1] / "examples" / "batched_tdb.json").read_text())
SPEC = BASE["subRequests"][0]


def _submit(client, body, status=202):
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _run(app, engine_model, sweep_id, budget=8 << 30):
    from worker.sweeps import execute_sweep

    return execute_sweep(
        app.extensions["actq.sessionmaker"],
        sweep_id,
        model=lambda: engine_model,
        worker="test",
        lease_seconds=60,
        max_attempts=3,
        memory_budget=budget,
    )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"base": BASE, "grid": {"heads": [3]}}, "grid.heads.0"),
        ({"base": BASE, "grid": {"heads": "all", "positions": 15}}, "grid.positions"),
        ({"base": BASE, "grid": {"heads": "all", "positions": [0, -1]}}, "grid.positions.1"),
        ({"base": BASE, "grid": {"neurons": [{"layer": 0, "index": 256}]}}, "grid.neurons.0.index"),
        ({"base": BASE, "grid": {"neurons": [{"layer": 5, "index": 0}]}}, "grid.neurons.0.layer"),
        ({"base": BASE, "grid": {}}, "grid"),
        ({"base": BASE, "grid": {"heads": "all", "neurons": [{"layer": 0, "index": 0}]}}, "grid"),
        ({"grid": {"heads": "all"}}, "base"),
        ({"base": {**SPEC, "prompt": ""}, "grid": {"heads": "all"}}, "base.prompt"),
        (
            {
                "base": {"subRequests": [{**SPEC, "targetTokens": [" Germany is"]}]},
                "grid": {"heads": "all"},
            },
            "base.subRequests.0.targetTokens",
        ),
        ({"base": {"subRequests": [SPEC, SPEC]}, "grid": {"heads": "all"}}, "base.subRequests"),
        ({"base": BASE, "grid": {"heads": "all", "values": "zero"}}, "grid.values"),
        ({"base": BASE, "grid": {"latents": [{"layer": 0, "index": 1}]}}, "grid"),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_field(client, app_sessions, body, path):
    response = client.post("/v1/sweeps", json=body)
    assert 400 <= response.status_code < 500, response.get_json()
    error = response.get_json()["error"]
    assert error["path"] == path or error["path"].startswith(path + "."), error
    with app_sessions() as session:
        assert session.query(Job).count() == 0


def test_a_sweep_over_the_cost_bound_says_how_many_points_fit(app, client):
    settings = app.config["ACTQ_SETTINGS"]
    app.config["ACTQ_SETTINGS"] = settings.model_copy(update={"max_sweep_response_bytes": 1 << 20})
    error = _submit(client, {"base": BASE, "grid": {"heads": "all", "positions": "all"}}, 422)
    assert error["error"]["path"] == "grid"
    message = error["error"]["message"]
    assert "180 points" in message and "ACTQ_MAX_SWEEP_RESPONSE_BYTES" in message
    fit = int(message.rsplit(": ", 1)[1].split()[0])
    assert 0 < fit < 180
    app.config["ACTQ_SETTINGS"] = settings.model_copy(update={"max_sweep_points": 10})
    error = _submit(client, {"base": BASE, "grid": {"heads": "all"}}, 422)
    assert error["error"]["path"] == "grid" and "ACTQ_MAX_SWEEP_POINTS" in error["error"]["message"]


def test_every_point_is_a_job_answering_as_its_request_alone(app, client, engine_model):
    from worker.engine import run

    sweep = _submit(client, {"base": BASE, "grid": {"heads": [1, 2]}, "tags": ["t"]})
    assert sweep["progress"] == {"done": 0, "of": 8, "finished": 0, "failed": 0, "canceled": 0}
    assert _run(app, engine_model, sweep["id"], budget=1) == "finished"  # one point per pass
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert view["status"] == "finished" and view["progress"]["finished"] == 8
    heads = [(p["layer"], p["nodeIndex"], p["position"], p["value"]) for p in view["points"]]
    assert heads == [(layer, h, 14, 0.0) for layer in (1, 2) for h in range(4)]
    baseline = view["baseline"]["run"].split("/")[0]
    base_job = client.get(f"/v1/jobs/{baseline}/result").get_json()
    assert_same_response(
        strip_timing(base_job), strip_timing(run("batched_tdb", BASE, engine_model))
    )
    for point in view["points"]:
        job_id = point["run"].split("/")[0]
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        assert f"sweep:{sweep['id']}" in job["tags"] and "t" in job["tags"]
        with app.extensions["actq.sessionmaker"]() as session:
            request = session.get(Job, job_id).request
        ablation = request["subRequests"][0]["nodeAblations"][-1]
        assert ablation["nodeIndex"]["layerIndex"] == point["layer"]
        assert ablation["nodeIndex"]["tensorIndices"][-1] == point["nodeIndex"]
        stored = client.get(f"/v1/jobs/{job_id}/result").get_json()
        alone = run("batched_tdb", request, engine_model)
        assert_same_response(strip_timing(stored), strip_timing(alone))
        loss = alone["inferenceSubResponses"][0]["inferenceResponse"]["inferenceAndTokenData"][
            "loss"
        ]
        assert point["loss"] == pytest.approx(loss, rel=1e-6)
        assert point["lossChange"] == pytest.approx(loss - view["baseline"]["loss"], rel=1e-6)
    runs = client.get(f"/v1/runs?tag=sweep:{sweep['id']}&limit=50").get_json()
    assert len(runs["runs"]) == 9  # the points and the baseline, in the history


def test_shared_passes_store_the_same_as_one_point_per_pass(app, client, engine_model):
    one = _submit(client, {"base": BASE, "grid": {"heads": [0]}, "node": None})
    many = _submit(client, {"base": BASE, "grid": {"heads": [0]}})
    assert _run(app, engine_model, one["id"], budget=1) == "finished"
    assert _run(app, engine_model, many["id"]) == "finished"
    a = client.get(f"/v1/sweeps/{one['id']}").get_json()["points"]
    b = client.get(f"/v1/sweeps/{many['id']}").get_json()["points"]
    for pa, pb in zip(a, b, strict=True):
        ra = client.get(f"/v1/jobs/{pa['run'].split('/')[0]}/result").get_json()
        rb = client.get(f"/v1/jobs/{pb['run'].split('/')[0]}/result").get_json()
        assert strip_timing(ra) == strip_timing(rb)  # byte for byte, timing aside


def test_neuron_mean_values_and_a_named_node(app, client, engine_model):
    from worker.engine import run

    node = {
        "nodeType": "mlp_neuron",
        "tensorIndices": [14, 5],
        "layerIndex": 2,
        "passType": "forward",
    }
    body = {
        "base": BASE,
        "grid": {"neurons": [{"layer": 0, "index": 3}], "positions": [0, "last"], "values": "mean"},
        "node": node,
    }
    sweep = _submit(client, body)
    assert _run(app, engine_model, sweep["id"]) == "finished"
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert view["node"] == node
    probe = {
        "inferenceSubRequests": [
            {
                "inferenceRequestSpec": {"prompt": SPEC["prompt"]},
                "processingRequestSpecByName": {
                    "a": {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 3}
                },
            }
        ]
    }
    acts = run("batched", probe, engine_model)["inferenceSubResponses"][0]
    values = acts["processingResponseDataByName"]["a"]["activations"]
    mean = sum(values) / len(values)
    assert [p["position"] for p in view["points"]] == [0, 14]
    assert all(p["value"] == pytest.approx(mean, rel=1e-6) for p in view["points"])


def test_cancel_stops_the_remaining_points(app, client, engine_model):
    sweep = _submit(client, {"base": BASE, "grid": {"heads": "all"}})
    canceled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    assert _run(app, engine_model, sweep["id"]) is None  # a canceled sweep is not claimed
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 409

    from models.store.sweeps import request_sweep_cancel
    from models.store.tables import Sweep

    started = _submit(client, {"base": BASE, "grid": {"heads": "all"}})
    sessions = app.extensions["actq.sessionmaker"]

    def cancel_after_first_pass(*args, **kwargs):  # a cancel that arrives while it runs
        with sessions.begin() as session:
            request_sweep_cancel(session, session.get(Sweep, started["id"]))
        return real(*args, **kwargs)

    import worker.sweep_passes as passes

    real = passes.run_point_groups
    passes.run_point_groups = cancel_after_first_pass
    try:
        status = _run(app, engine_model, started["id"], budget=1)
    finally:
        passes.run_point_groups = real
    assert status == "canceled"
    view = client.get(f"/v1/sweeps/{started['id']}").get_json()
    assert view["status"] == "canceled"
    assert view["progress"]["canceled"] == 12 and view["progress"]["done"] == 12
    assert view["baseline"]["loss"] is not None  # the pass under way was stored


def test_csv_export_has_a_row_per_point(app, client, engine_model):
    sweep = _submit(client, {"base": BASE, "grid": {"heads": [2]}})
    _run(app, engine_model, sweep["id"])
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    for url in (f"/v1/sweeps/{sweep['id']}.csv", f"/v1/sweeps/{sweep['id']}?format=csv"):
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "text/csv"
        table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
        assert [r["run"] for r in table] == [p["run"] for p in view["points"]]
        assert [float(r["lossChange"]) for r in table] == pytest.approx(
            [p["lossChange"] for p in view["points"]]
        )
    assert client.get("/v1/sweeps/nope").status_code == 404


def test_a_sweep_whose_worker_died_resumes_without_running_points_twice(app, client, engine_model):
    import worker.sweep_passes as passes
    from worker.sweeps import execute_sweep

    sweep = _submit(client, {"base": BASE, "grid": {"heads": [0, 1]}})
    sessions = app.extensions["actq.sessionmaker"]
    real, ran = passes.run_point_groups, []

    def dies_on_the_third_pass(groups, model):
        if len(ran) == 2:
            raise SystemExit("worker killed")  # not an Exception: nothing is stored, as in a kill
        ran.append(len(groups))
        return real(groups, model)

    passes.run_point_groups = dies_on_the_third_pass
    try:
        with pytest.raises(SystemExit):
            _run(app, engine_model, sweep["id"], budget=1)
    finally:
        passes.run_point_groups = real
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert view["status"] == "started" and view["progress"]["finished"] == 1  # baseline + 1
    assert ran == [1, 1]

    counted = []

    def counting(groups, model):
        counted.append(len(groups))
        return real(groups, model)

    passes.run_point_groups = counting
    try:  # the broker delivers the message again; the lease (0 s here) has run out
        status = execute_sweep(
            sessions,
            sweep["id"],
            model=lambda: engine_model,
            worker="second",
            lease_seconds=0,
            max_attempts=3,
            memory_budget=1,
        )
    finally:
        passes.run_point_groups = real
    assert status == "finished"
    assert sum(counted) == 7  # the 8 points less the one finished; the baseline not again
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert view["progress"]["finished"] == 8 and view["attempts"] == 2
    assert all(p["lossChange"] is not None for p in view["points"])


def test_a_sweep_of_autoencoder_latents(tmp_path, golden_model_dir):
    import migrations
    from api.app import create_app
    from tests.shared_dir import GOLDEN
    from worker.engine import load_model, run

    mlp = str(GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny")
    url = f"sqlite:///{tmp_path / 'ae.db'}"
    migrations.upgrade(url)
    app = create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
            "mlp_autoencoder": mlp,
        }
    )
    client = app.test_client()
    latents = [{"nodeType": "mlp_autoencoder_latent", "layer": 0, "index": 3}]
    too_far = [{"nodeType": "mlp_autoencoder_latent", "layer": 0, "index": 10**6}]
    refused = _submit(client, {"base": BASE, "grid": {"latents": too_far}}, 422)
    assert refused["error"]["path"] == "grid" and "latent" in refused["error"]["message"]
    sweep = _submit(client, {"base": BASE, "grid": {"latents": latents, "values": [0, 2.5]}})
    model = load_model(str(golden_model_dir), "cpu", mlp_autoencoder=mlp)
    assert _run(app, model, sweep["id"]) == "finished"
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert [p["value"] for p in view["points"]] == [0.0, 2.5]
    with app.extensions["actq.sessionmaker"]() as session:
        for point in view["points"]:
            request = session.get(Job, point["run"].split("/")[0]).request
            node = request["subRequests"][0]["nodeAblations"][-1]["nodeIndex"]
            assert node["nodeType"] == "mlp_autoencoder_latent" and node["tensorIndices"] == [14, 3]
            stored = client.get(f"/v1/jobs/{point['run'].split('/')[0]}/result").get_json()
            alone = run("batched_tdb", request, model)
            assert_same_response(strip_timing(stored), strip_timing(alone))
    assert view["points"][0]["loss"] != view["points"][1]["loss"]


def test_a_point_another_worker_holds_is_waited_for_not_run_twice(app, client, engine_model):
    import threading
    import time

    import worker.sweep_passes as passes
    from models.store.jobs import claim_job, finish_job
    from models.store.runs import run_losses
    from models.store.sweeps import points_of
    from models.wire.encoding import dumps
    from worker.engine import run

    sweep = _submit(client, {"base": BASE, "grid": {"heads": [2]}})
    sessions = app.extensions["actq.sessionmaker"]
    real, ran, other = passes.run_point_groups, [], []

    def other_worker(job_id: str, attempt: int) -> None:  # finishes once the sweep did the rest
        deadline = time.monotonic() + 120
        while len(ran) < 4 and time.monotonic() < deadline:  # baseline + 3 points
            time.sleep(0.05)
        with sessions() as session:
            request = session.get(Job, job_id).request
        response = run("batched_tdb", request, engine_model)
        with sessions.begin() as session:
            finish_job(
                session, job_id, attempt, dumps(response), run_losses("batched_tdb", response), 0.1
            )

    def steal_a_point_on_the_first_pass(groups, model):
        if not other:
            with sessions.begin() as session:
                job_id = points_of(session, sweep["id"])[1].job_id
                other.append(job_id)
                attempt = claim_job(session, job_id, "other-worker", 60)
            threading.Thread(target=other_worker, args=(job_id, attempt), daemon=True).start()
        ran.extend(groups)
        return real(groups, model)

    passes.run_point_groups = steal_a_point_on_the_first_pass
    try:
        assert _run(app, engine_model, sweep["id"], budget=1) == "finished"
    finally:
        passes.run_point_groups = real
    assert len(ran) == 4  # the baseline and three points; the fourth was the other worker's
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert view["progress"]["finished"] == 4
    stolen = view["points"][1]
    with sessions() as session:
        assert session.get(Job, other[0]).worker == "other-worker"
    assert stolen["loss"] is not None and stolen["lossChange"] is not None
