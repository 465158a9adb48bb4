"""The run-history routes: listing and filtering runs, editing labels, comparing, baselines, and
the cache of identical requests. Flask's test client on SQLite; where a test needs a result, the
job is run by the worker's own task logic with the real engine, or stored from the golden pair.
"""

from __future__ import annotations

import copy
import json

import pytest

from models.model_meta import resolve_model
from tests.conftest import GOLDEN_MODEL, GOLDEN_MODEL_NAME
from tests.runs_support import golden_pair, run_queued, single, store_finished

PAIR = golden_pair()
CLEAN = single(PAIR["request"], 0)
ABLATED = single(PAIR["request"], 1)
NEURON = {
    "nodeType": "mlp_neuron",
    "tensorIndices": [2, 173],
    "layerIndex": 0,
    "passType": "forward",
}


@pytest.fixture(scope="module")
def revision() -> str:
    return resolve_model(str(GOLDEN_MODEL), None).revision


def _sub(response: dict, index: int) -> dict:
    return response["inferenceSubResponses"][index]


def _loss(response: dict, index: int) -> float:
    return _sub(response, index)["inferenceResponse"]["inferenceAndTokenData"]["loss"]


def _addresses(client, query: str = "") -> list[str]:
    response = client.get(f"/v1/runs?{query}")
    assert response.status_code == 200, response.get_json()
    return [r["run"] for r in response.get_json()["runs"]]


def _submit(client, request: dict, query: str = "") -> str:
    response = client.post(f"/v1/batched_tdb?{query}", json=request)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _with_ablations(request: dict, ablations: list[dict]) -> dict:
    twin = copy.deepcopy(request)
    twin["subRequests"][0]["nodeAblations"] = ablations
    return twin


# --- listing and filtering ------------------------------------------------------------------


def test_each_sub_request_is_a_run_with_its_settings_and_loss(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"], label="pair", tags=["t"])
    runs = client.get("/v1/runs").get_json()["runs"]
    assert [r["run"] for r in runs] == [f"{job}/1", f"{job}/0"]
    ablated, clean = runs
    assert clean["prompt"] == PAIR["request"]["subRequests"][0]["prompt"]
    assert clean["targetTokens"] == [" Germany"] and clean["distractorTokens"] == [" France"]
    assert (clean["hasAblations"], clean["ablations"], clean["ablationKeys"]) == (False, [], [])
    assert ablated["hasAblations"] is True
    assert ablated["ablations"] == PAIR["request"]["subRequests"][1]["nodeAblations"]
    assert ablated["ablationKeys"] == ["attention_head:1:14,*,0"]
    assert clean["loss"] == _loss(PAIR["response"], 0)
    assert ablated["loss"] == _loss(PAIR["response"], 1)
    assert (clean["label"], clean["tags"], clean["status"]) == ("pair", ["t"], "finished")
    assert clean["page"] == f"/runs/{job}/0" and clean["url"] == f"/v1/runs/{job}/0"


def test_runs_filter_on_prompt_model_ablations_tags_and_time(client):
    clean = _submit(client, CLEAN, "tag=x")
    pair = _submit(client, PAIR["request"], "tag=x&tag=y&label=L")
    node = PAIR["request"]["subRequests"][1]["nodeAblations"][0]
    both = [node, {"nodeIndex": NEURON, "value": 0}]
    forward = _submit(client, _with_ablations(CLEAN, both))
    backward = _submit(client, _with_ablations(CLEAN, [both[1], {**both[0], "value": 0.0}]))
    other = copy.deepcopy(CLEAN)
    other["subRequests"][0]["prompt"] = (
        "Rome is the capital of Italy, and Madrid is the capital of Spain."
    )
    rome = _submit(client, other)

    everything = [f"{rome}/0", f"{backward}/0", f"{forward}/0", f"{pair}/1", f"{pair}/0"]
    assert _addresses(client) == [*everything, f"{clean}/0"]
    assert _addresses(client, "tag=x") == [f"{pair}/1", f"{pair}/0", f"{clean}/0"]
    assert _addresses(client, "tag=x&tag=y") == [f"{pair}/1", f"{pair}/0"]
    assert _addresses(client, "label=L") == [f"{pair}/1", f"{pair}/0"]
    assert _addresses(client, "hasAblations=false") == [f"{rome}/0", f"{pair}/0", f"{clean}/0"]
    assert _addresses(client, "hasAblations=true") == [f"{backward}/0", f"{forward}/0", f"{pair}/1"]
    # the same node however it is written; TDB ignores an attention head's middle index
    for key in (
        "attention_head:1:14,0,0",
        "attention_head:1:14,*,0",
        json.dumps(node["nodeIndex"]),
    ):
        assert _addresses(client, "ablates=" + key) == [
            f"{backward}/0",
            f"{forward}/0",
            f"{pair}/1",
        ], key
    assert _addresses(client, "ablates=mlp_neuron:0:2,173&ablates=attention_head:1:14,3,0") == [
        f"{backward}/0",
        f"{forward}/0",
    ]
    assert _addresses(client, f"sameAblationsAs={forward}/0") == [f"{backward}/0", f"{forward}/0"]
    assert f"{rome}/0" not in _addresses(client, f"samePromptAs={clean}")
    assert len(_addresses(client, f"samePromptAs={clean}")) == 5
    assert _addresses(client, "promptContains=MADRID") == [f"{rome}/0"]
    assert _addresses(client, f"model={GOLDEN_MODEL_NAME}&endpoint=batched_tdb&status=queued") == [
        *everything,
        f"{clean}/0",
    ]
    assert _addresses(client, "since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z") == []
    assert _addresses(client, "status=finished") == []


def test_runs_page_with_a_cursor(client):
    first = _submit(client, PAIR["request"])
    second = _submit(client, CLEAN)
    page = client.get("/v1/runs?limit=2").get_json()
    assert [r["run"] for r in page["runs"]] == [f"{second}/0", f"{first}/1"]
    assert page["nextCursor"] == f"{first}/1"
    assert page["next"].endswith(f"cursor={first}/1".replace("/", "%2F"))
    rest = client.get(page["next"]).get_json()
    assert [r["run"] for r in rest["runs"]] == [f"{first}/0"] and rest["nextCursor"] is None


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("ablates=attention_head", "ablates"),
        ("ablates=attention_head:x:1,2,3", "ablates"),
        ("hasAblations=maybe", "hasAblations"),
        ("limit=0", "limit"),
        ("cursor=abc/x", "cursor"),
        ("status=done", "status"),
    ],
)
def test_bad_run_filters_are_422(client, query, path):
    response = client.get(f"/v1/runs?{query}")
    assert response.status_code == 422
    assert response.get_json()["error"]["path"] == path


# --- one run, labels and tags ---------------------------------------------------------------


def test_a_run_is_addressed_as_job_slash_n_or_by_its_job(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    first = client.get(f"/v1/runs/{job}").get_json()
    assert first["run"] == f"{job}/0" and first["request"] == PAIR["request"]["subRequests"][0]
    second = client.get(f"/v1/runs/{job}/1").get_json()
    assert second["request"] == PAIR["request"]["subRequests"][1]
    missing = client.get(f"/v1/runs/{job}/2")
    assert missing.status_code == 404
    assert f"there is no run {job}/2" in missing.get_json()["error"]["message"]
    assert client.get("/v1/runs/nosuchjob/0").status_code == 404
    huge = client.get(f"/v1/runs/{job}/9223372036854775808")  # found by the fuzz test: was a 500
    assert huge.status_code == 422 and huge.get_json()["error"]["path"] == "run"


def test_labels_and_tags_are_edited_on_runs_and_jobs(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"], label="old", tags=["a"])
    edited = client.patch(f"/v1/runs/{job}/1", json={"label": "head 1.0 off", "addTags": ["b"]})
    assert edited.status_code == 200, edited.get_json()
    assert (edited.get_json()["label"], edited.get_json()["tags"]) == ("head 1.0 off", ["a", "b"])
    assert _addresses(client, "tag=b") == [f"{job}/1"]
    assert _addresses(client, "label=head%201.0%20off") == [f"{job}/1"]
    body = client.patch(f"/v1/jobs/{job}", json={"tags": ["c"], "label": None}).get_json()
    assert (body["label"], body["tags"]) == (None, ["c"])
    assert _addresses(client, "tag=c") == [f"{job}/1", f"{job}/0"]
    assert _addresses(client, "tag=a") == []
    assert client.get("/v1/jobs?tag=c").get_json()["jobs"][0]["id"] == job
    assert client.patch(f"/v1/runs/{job}/0", json={"colour": "red"}).status_code == 422
    assert client.patch(f"/v1/runs/{job}/0", json={"tags": "x"}).status_code == 422
    assert client.patch(f"/v1/runs/{job}/0", json={"tags": ["x" * 101]}).status_code == 422
    assert client.patch("/v1/jobs/nosuchjob", json={"tags": []}).status_code == 404


# --- comparison -----------------------------------------------------------------------------


def _group_values(response: dict, index: int, name: str = "topKComponents") -> dict:
    data = _sub(response, index)["processingResponseDataByName"][name]
    return {
        json.dumps(node, sort_keys=True): {g: v[i] for g, v in data["activationsByGroupId"].items()}
        for i, node in enumerate(data["nodeIndices"])
    }


def test_compare_of_the_golden_pair_matches_the_stored_responses(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    response = client.get(f"/v1/compare?a={job}/0&b={job}/1")
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["a"]["run"] == f"{job}/0" and result["b"]["run"] == f"{job}/1"
    assert result["differs"] == ["ablations"]
    assert result["loss"] == {
        "a": _loss(PAIR["response"], 0),
        "b": _loss(PAIR["response"], 1),
        "delta": _loss(PAIR["response"], 1) - _loss(PAIR["response"], 0),
    }
    a_values, b_values = _group_values(PAIR["response"], 0), _group_values(PAIR["response"], 1)
    (table,) = result["nodeTables"]
    assert table["counts"] == {"both": len(a_values), "onlyA": 0, "onlyB": 0}
    for row in table["rows"]:
        key = json.dumps(row["node"], sort_keys=True)
        for group, c in row["values"].items():
            assert c == {
                "a": a_values[key][group],
                "b": b_values[key][group],
                "delta": b_values[key][group] - a_values[key][group],
            }
    assert result["page"] == f"/compare?a={job}/0&b={job}/1"


def test_compare_options_only_diff_top_and_sort(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    base = f"/v1/compare?a={job}&b={job}/1"
    result = client.get(base + "&onlyDiff=1&top=5&sort=act_times_grad").get_json()
    assert [s["name"] for s in result["settings"]] == ["ablations"]
    rows = result["nodeTables"][0]["rows"]
    assert len(rows) == 5
    deltas = [abs(r["values"]["act_times_grad"]["delta"]) for r in rows]
    assert deltas == sorted(deltas, reverse=True)
    a_values, b_values = _group_values(PAIR["response"], 0), _group_values(PAIR["response"], 1)
    largest = max(
        abs(b_values[k]["act_times_grad"] - a_values[k]["act_times_grad"]) for k in a_values
    )
    assert deltas[0] == largest
    assert len(result["topOutputTokens"]["rows"]) == 5
    assert client.get(base + "&only_diff=1").get_json()["onlyDiff"] is True
    assert client.get(base + "&sort=nosuchgroup").status_code == 422
    assert client.get(f"/v1/compare?a={job}").status_code == 422
    assert client.get(f"/v1/compare?a={job}&b=nosuchjob/0").status_code == 404


def test_compare_runs_of_two_jobs_treats_a_missing_node_as_absent(
    client, app_sessions, engine_model
):
    clean, ablated = _submit(client, CLEAN), _submit(client, ABLATED)
    for job in (clean, ablated):
        assert run_queued(app_sessions, job, engine_model) == "finished"
    results = [json.loads(client.get(f"/v1/jobs/{j}/result").data) for j in (clean, ablated)]
    result = client.get(f"/v1/compare?a={clean}&b={ablated}").get_json()
    a_values, b_values = (_group_values(r, 0) for r in results)
    (table,) = result["nodeTables"]
    only_a, only_b = set(a_values) - set(b_values), set(b_values) - set(a_values)
    assert only_a and only_b  # separate jobs: their top-k lists differ
    assert table["counts"] == {
        "both": len(set(a_values) & set(b_values)),
        "onlyA": len(only_a),
        "onlyB": len(only_b),
    }
    for row in table["rows"]:
        key = json.dumps(row["node"], sort_keys=True)
        assert (row["inA"], row["inB"]) == (key in a_values, key in b_values)
        for group, c in row["values"].items():
            expected_a, expected_b = (
                a_values.get(key, {}).get(group),
                b_values.get(key, {}).get(group),
            )
            delta = None if expected_a is None or expected_b is None else expected_b - expected_a
            assert c == {"a": expected_a, "b": expected_b, "delta": delta}
    assert result["loss"]["delta"] == _loss(results[1], 0) - _loss(results[0], 0)


# --- baselines ------------------------------------------------------------------------------


def test_baseline_is_the_newest_clean_run_of_the_same_prompt_model_and_tokens(
    client, app_sessions, revision
):
    pair = store_finished(app_sessions, PAIR["request"], PAIR["response"], revision=revision)
    body = client.get(f"/v1/runs/{pair}/1/baseline").get_json()
    assert body["baseline"]["run"] == f"{pair}/0"
    assert body["compareUrl"] == f"/v1/compare?a={pair}/0&b={pair}/1"
    ablated = store_finished(
        app_sessions,
        ABLATED,
        {"inferenceSubResponses": [_sub(PAIR["response"], 1)]},
        revision=revision,
    )
    newer = store_finished(
        app_sessions,
        CLEAN,
        {"inferenceSubResponses": [_sub(PAIR["response"], 0)]},
        revision=revision,
    )
    assert client.get(f"/v1/runs/{ablated}/baseline").get_json()["baseline"]["run"] == f"{newer}/0"
    _submit(client, CLEAN, "fresh=1")  # queued, not finished: never a baseline
    assert client.get(f"/v1/runs/{ablated}/baseline").get_json()["baseline"]["run"] == f"{newer}/0"
    other = _with_ablations(CLEAN, [{"nodeIndex": NEURON, "value": 0.0}])
    other["subRequests"][0]["targetTokens"] = [" Paris"]
    lonely = store_finished(
        app_sessions,
        other,
        {"inferenceSubResponses": [_sub(PAIR["response"], 1)]},
        revision=revision,
    )
    missing = client.get(f"/v1/runs/{lonely}/0/baseline")
    assert missing.status_code == 404
    message = missing.get_json()["error"]["message"]
    assert f"actq compare {lonely}/0 --baseline" in message
    assert f"POST /v1/runs/{lonely}/0/baseline" in message


def test_post_baseline_submits_the_clean_twin(client, app_sessions, engine_model):
    ablated = _submit(client, _with_ablations(CLEAN, [{"nodeIndex": NEURON, "value": 0.0}]))
    assert client.get(f"/v1/runs/{ablated}/baseline").status_code == 404
    response = client.post(f"/v1/runs/{ablated}/baseline")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["run"] == f"{body['id']}/0" and body["status"] == "queued"
    twin = client.get(f"/v1/runs/{body['id']}/0").get_json()
    assert twin["request"] == CLEAN["subRequests"][0]
    assert twin["label"] == f"baseline of {ablated}/0"
    assert run_queued(app_sessions, body["id"], engine_model) == "finished"
    found = client.get(f"/v1/runs/{ablated}/baseline").get_json()
    assert found["baseline"]["run"] == body["run"]
    assert client.post(f"/v1/runs/{body['id']}/baseline").status_code == 400


# --- the cache of identical requests --------------------------------------------------------


def test_identical_request_is_answered_from_the_store(client, app_sessions, engine_model):
    first = _submit(client, PAIR["request"])
    pending_twin = _submit(client, PAIR["request"])  # nothing finished yet: a real job
    twin = client.get(f"/v1/jobs/{pending_twin}").get_json()
    assert (twin["cacheOf"], twin["cacheHit"]) == (None, False)
    assert run_queued(app_sessions, first, engine_model) == "finished"
    response = client.post("/v1/batched_tdb?label=again&tag=z", json=PAIR["request"])
    assert response.status_code == 202
    hit = response.get_json()
    assert hit["status"] == "finished" and hit["id"] not in (first, pending_twin)
    job = client.get(f"/v1/jobs/{hit['id']}").get_json()
    assert (job["cacheOf"], job["cacheHit"], job["label"], job["tags"]) == (
        first,
        True,
        "again",
        ["z"],
    )
    original = client.get(f"/v1/jobs/{first}").get_json()
    assert [r["loss"] for r in job["runs"]] == [r["loss"] for r in original["runs"]]
    assert (
        client.get(f"/v1/jobs/{hit['id']}/result").data
        == client.get(f"/v1/jobs/{first}/result").data
    )
    waited = client.post("/v1/batched_tdb?wait=5", json=PAIR["request"])
    assert waited.status_code == 200 and waited.data == client.get(f"/v1/jobs/{first}/result").data
    fresh = client.post("/v1/batched_tdb?fresh=1", json=PAIR["request"]).get_json()
    assert fresh["status"] == "queued"
    other = client.post("/v1/batched_tdb", json=CLEAN).get_json()
    assert other["status"] == "queued"
    # a hit of a hit points at the job that computed the result
    again = client.post("/v1/batched_tdb", json=PAIR["request"]).get_json()
    assert client.get(f"/v1/jobs/{again['id']}").get_json()["cacheOf"] == first


# --- the same on PostgreSQL -----------------------------------------------------------------


@pytest.fixture
def backend_app(tmp_path, db_url, golden_model_dir):
    """The API on each database backend in turn (the ``app`` fixture is SQLite only)."""
    from api.app import create_app

    app = create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": db_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
        }
    )
    yield app
    app.extensions["actq.engine"].dispose()


def test_history_comparison_baseline_and_cache_on_each_backend(backend_app, revision):
    client, sessions = backend_app.test_client(), backend_app.extensions["actq.sessionmaker"]
    job = store_finished(sessions, PAIR["request"], PAIR["response"], revision=revision, tags=["t"])
    assert _addresses(client, "ablates=attention_head:1:14,0,0&tag=t") == [f"{job}/1"]
    assert _addresses(client, f"samePromptAs={job}/1&hasAblations=false") == [f"{job}/0"]
    assert (
        client.get(f"/v1/runs/{job}/1").get_json()["request"] == PAIR["request"]["subRequests"][1]
    )
    result = client.get(f"/v1/compare?a={job}/0&b={job}/1").get_json()
    assert result["differs"] == ["ablations"]
    assert result["loss"]["delta"] == _loss(PAIR["response"], 1) - _loss(PAIR["response"], 0)
    assert client.get(f"/v1/runs/{job}/1/baseline").get_json()["baseline"]["run"] == f"{job}/0"
    assert client.patch(f"/v1/jobs/{job}", json={"addTags": ["u"]}).get_json()["tags"] == ["t", "u"]
    assert _addresses(client, "tag=u") == [f"{job}/1", f"{job}/0"]
    hit = client.post("/v1/batched_tdb", json=PAIR["request"]).get_json()
    assert hit["status"] == "finished"
    assert client.get(f"/v1/jobs/{hit['id']}").get_json()["cacheOf"] == job
    assert (
        client.get(f"/v1/jobs/{hit['id']}/result").data == client.get(f"/v1/jobs/{job}/result").data
    )
