"""The API with Flask's test client on SQLite and a filesystem broker that nothing consumes.

Jobs are run, where a test needs a result, by the task logic itself (``execute_job``) with the
real engine, as a worker would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from models.store.tables import Job
from tests.conftest import (
    ERROR_CASES,
    OK_CASES,
    REPO,
    assert_same_response,
    case_ids,
    queued_messages,
    strip_timing,
)
from worker.execution import execute_job

BASE_TDB = json.loads((Path(__file__).parents[1] / "examples" / "batched_tdb.json").read_text())

TDB = next(c for c in OK_CASES if c["name"].startswith("061"))


def _count(app_sessions) -> int:
    with app_sessions() as session:
        return session.query(Job).count()


def _run(app_sessions, job_id, engine_model) -> str:
    return execute_job(app_sessions, job_id, model=lambda: engine_model, worker="test")


@pytest.mark.parametrize("case", OK_CASES, ids=case_ids(OK_CASES))
def test_submit_stores_the_job_and_publishes_its_id(client, app_sessions, tmp_path, case):
    response = client.post(f"/v1/{case['endpoint']}", json=case["request"])
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["url"] == f"/v1/jobs/{body['id']}"
    assert body["resultUrl"] == f"/v1/jobs/{body['id']}/result"
    assert response.headers["Location"] == body["url"]
    messages = queued_messages(tmp_path)
    assert len(messages) == 1 and messages[0].endswith(".actq.oracle-gpt2-tiny.msg")
    with app_sessions() as session:
        job = session.get(Job, body["id"])
        assert (job.endpoint, job.model, job.status) == (
            case["endpoint"],
            "oracle-gpt2-tiny",
            "queued",
        )


@pytest.mark.parametrize("case", ERROR_CASES, ids=case_ids(ERROR_CASES))
def test_bad_requests_are_refused_before_anything_is_stored(client, app_sessions, tmp_path, case):
    response = client.post(f"/v1/{case['endpoint']}", json=case["request"])
    assert 400 <= response.status_code < 500
    error = response.get_json()["error"]
    assert error["message"] and error["type"]
    assert error["path"], "the refusal names the field"
    assert _count(app_sessions) == 0
    assert queued_messages(tmp_path) == []


@pytest.mark.parametrize(
    "body, path",
    [
        (b"{not json", None),
        (b'{"subRequests": [{"prompt": 3}]}', "subRequests.0.prompt"),
        (b'{"subRequests": "x"}', "subRequests"),
    ],
)
def test_unparseable_bodies_are_422_with_the_field_path(client, app_sessions, body, path):
    response = client.post("/v1/batched_tdb", data=body, content_type="application/json")
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["type"] == "validation_error"
    assert error["path"] == path
    assert _count(app_sessions) == 0


def test_unknown_model_and_endpoint_are_404(client):
    response = client.post("/v1/model_info?model=nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["path"] == "model"
    assert client.post("/v1/nope", json={}).status_code == 404
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/nope/result").status_code == 404


@pytest.mark.parametrize(
    "query, path",
    [("wait=soon", "wait"), ("wait=-1", "wait"), ("label=" + "x" * 201, "label"), ("tag=", "tag")],
)
def test_bad_query_parameters_are_422(client, query, path):
    response = client.post(f"/v1/model_info?{query}")
    assert response.status_code == 422
    assert response.get_json()["error"]["path"] == path


def test_pending_job_status_and_result(client):
    job_id = client.post("/v1/batched_tdb", json=TDB["request"]).get_json()["id"]
    status = client.get(f"/v1/jobs/{job_id}")
    assert status.status_code == 200
    assert status.headers["Retry-After"] == "1"
    body = status.get_json()
    assert body["status"] == "queued" and body["attempts"] == 0
    assert [r["address"] for r in body["runs"]] == [f"{job_id}/0", f"{job_id}/1"]
    assert [r["hasAblations"] for r in body["runs"]] == [False, True]
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 202
    assert result.headers["Retry-After"] == "1"
    assert client.get(f"/v1/jobs/{job_id}/result?wait=0.2").status_code == 202


def test_submit_with_wait_answers_202_when_the_job_is_not_done(client):
    response = client.post("/v1/model_info?wait=0.2")
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"


def test_finished_job_result_is_the_stored_tdb_json(client, app_sessions, engine_model):
    from models.wire.encoding import dumps
    from worker.engine import run

    job_id = client.post("/v1/batched_tdb?label=pair&tag=t", json=TDB["request"]).get_json()["id"]
    assert _run(app_sessions, job_id, engine_model) == "finished"
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.content_type == "application/json"
    parsed = json.loads(result.data)
    assert dumps(parsed).encode() == result.data  # stored as TDB writes it, byte for byte
    expected = run("batched_tdb", TDB["request"], engine_model)
    assert_same_response(strip_timing(parsed), strip_timing(expected))
    deflated = client.get(f"/v1/jobs/{job_id}/result", headers={"Accept-Encoding": "gzip, deflate"})
    assert deflated.headers["Content-Encoding"] == "deflate"
    assert len(deflated.data) < len(result.data) / 2
    assert zlib.decompress(deflated.data) == result.data
    refused = client.get(f"/v1/jobs/{job_id}/result", headers={"Accept-Encoding": "deflate;q=0"})
    assert "Content-Encoding" not in refused.headers and refused.data == result.data
    status = client.get(f"/v1/jobs/{job_id}")
    assert "Retry-After" not in status.headers
    body = status.get_json()
    assert body["status"] == "finished" and body["attempts"] == 1 and body["worker"] == "test"
    assert body["label"] == "pair" and body["tags"] == ["t"]
    assert body["runSeconds"] >= 0 and body["engineSeconds"] > 0
    losses = [
        s["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        for s in parsed["inferenceSubResponses"]
    ]
    assert [r["loss"] for r in body["runs"]] == losses


def test_failed_job_result_is_the_stored_error(client, app_sessions, engine_model):
    job_id = client.post("/v1/batched_tdb", json=TDB["request"]).get_json()["id"]
    with app_sessions.begin() as session:  # a request that slipped past validation
        job = session.get(Job, job_id)
        bad = json.loads(json.dumps(job.request))
        bad["subRequests"][0]["targetTokens"] = [" elephantine"]
        job.request = bad
    assert _run(app_sessions, job_id, engine_model) == "failed"
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert 400 <= result.status_code < 500
    error = result.get_json()["error"]
    assert set(error) == {"type", "message", "path"}
    assert client.get(f"/v1/jobs/{job_id}").get_json()["error"]["message"] == error["message"]


def test_history_filters_and_pages(client):
    clean = {"subRequests": [TDB["request"]["subRequests"][0]]}
    a = client.post("/v1/batched_tdb?tag=x", json=clean).get_json()["id"]
    b = client.post("/v1/batched_tdb?tag=x&tag=y&label=L", json=TDB["request"]).get_json()["id"]
    c = client.post("/v1/model_info").get_json()["id"]

    def ids(query=""):
        response = client.get(f"/v1/jobs?{query}")
        assert response.status_code == 200, response.get_json()
        return [j["id"] for j in response.get_json()["jobs"]]

    assert ids() == [c, b, a]
    assert ids("tag=x") == [b, a]
    assert ids("tag=x&tag=y") == [b]
    assert ids("label=L") == [b]
    assert ids("hasAblations=true") == [b]
    assert ids("hasAblations=false") == [c, a]
    assert ids("ablates=attention_head:1:14,0,0") == [b]
    assert ids("ablates=attention_head:1:14,5,0") == [b]  # TDB ignores a head's key index
    assert ids("ablates=attention_head:2:14,0,0") == []
    assert ids("endpoint=model_info") == [c]
    assert ids("status=queued&model=oracle-gpt2-tiny") == [c, b, a]
    assert ids("promptContains=berlin") == [b, a]
    assert ids("prompt=" + clean["subRequests"][0]["prompt"].replace(" ", "%20")) == [b, a]
    assert ids("since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z") == []
    page = client.get("/v1/jobs?limit=2").get_json()
    assert [j["id"] for j in page["jobs"]] == [c, b]
    assert page["next"].endswith(f"cursor={page['nextCursor']}")
    rest = client.get(page["next"]).get_json()
    assert [j["id"] for j in rest["jobs"]] == [a] and rest["nextCursor"] is None
    for bad in (
        "status=done",
        "endpoint=x",
        "limit=0",
        "since=yesterday",
        "hasAblations=maybe",
        "since=0001-01-01T00:00:00%2B00:01",  # before year 1 in UTC: found by the fuzz test
        "ablates=nonsense",
    ):
        assert client.get(f"/v1/jobs?{bad}").status_code == 422


def test_models_health_and_openapi(client):
    models = client.get("/v1/models").get_json()
    assert [m["name"] for m in models["models"]] == ["oracle-gpt2-tiny"]
    model = models["models"][0]
    assert (model["nLayers"], model["nHeads"], model["queue"], model["default"]) == (
        3,
        4,
        "actq.oracle-gpt2-tiny",
        True,
    )
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok"}
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    for endpoint in (
        "derived_scalars",
        "derived_attention_scalars",
        "multiple_top_k_derived_scalars",
        "batched",
        "batched_tdb",
    ):
        body = doc["paths"][f"/v1/{endpoint}"]["post"]["requestBody"]["content"]["application/json"]
        ref = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert ref in doc["components"]["schemas"]
        assert f"/{endpoint}" in doc["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
        "/v1/models",
        "/healthz",
        "/v1/model_info",
    ):
        assert path in doc["paths"]


def _shape(path: str) -> str:
    """A Flask rule or an OpenAPI path with its parameters unnamed (``/v1/sweeps/{}``)."""
    return re.sub(r"<[^>]+>|{[^}]+}", "{}", path)


def test_openapi_documents_every_sweep_route_from_its_models(app, client):
    from api.sweep_schemas import SweepView
    from models.wire.sweeps import SweepRequest

    doc = client.get("/openapi.json").get_json()
    documented = {
        (_shape(path), method.upper()) for path, ops in doc["paths"].items() for method in ops
    }
    routes = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("sweeps.")]
    assert len(routes) == 3
    for rule in routes:
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (_shape(rule.rule), method) in documented, (rule.rule, method)

    schemas = doc["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    def answer(path: str, method: str, status: str) -> dict:
        content = doc["paths"][path][method]["responses"][status]["content"]
        return resolve(content["application/json"]["schema"])

    submit = doc["paths"]["/v1/sweeps"]["post"]
    body = resolve(submit["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == set(
        SweepRequest.model_json_schema(by_alias=True)["properties"]
    )
    assert "grid" in body["required"]
    view = set(SweepView.model_json_schema(by_alias=True, mode="serialization")["properties"])
    assert set(answer("/v1/sweeps", "post", "202")["properties"]) == view
    assert set(answer("/v1/sweeps/{id}/cancel", "post", "202")["properties"]) == view
    table = answer("/v1/sweeps/{id}", "get", "200")
    assert set(table["properties"]) == view | {"points"}
    row = resolve(table["properties"]["points"]["items"])
    assert {"nodeType", "nodeIndex", "lossChange", "compareUrl"} <= set(row["properties"])
    assert "text/csv" in doc["paths"]["/v1/sweeps/{id}"]["get"]["responses"]["200"]["content"]

    # the documented shapes are what the routes send: a submission, its table and a cancel
    sweep = client.post("/v1/sweeps", json={"base": BASE_TDB, "grid": {"heads": [0]}})
    assert sweep.status_code == 202 and set(sweep.get_json()) == view
    listed = client.get(f"/v1/sweeps/{sweep.get_json()['id']}").get_json()
    assert set(listed) == view | {"points"} and set(listed["points"][0]) == set(row["properties"])
    canceled = client.post(f"/v1/sweeps/{sweep.get_json()['id']}/cancel")
    assert canceled.status_code == 200 and set(canceled.get_json()) == view


def test_tdb_route_errors_carry_message_detail_and_cors(client, app_sessions):
    origin = "http://localhost:3000"
    response = client.post(
        "/batched_tdb",
        data=b'{"subRequests": [{"prompt": 3}]}',
        content_type="application/json",
        headers={"Origin": origin},
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["message"] == body["error"]["message"]
    assert body["detail"][0]["loc"] == ["body", "subRequests", 0, "prompt"]
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    bad = next(c for c in ERROR_CASES if c["endpoint"] == "batched_tdb")
    response = client.post("/batched_tdb", json=bad["request"])
    assert 400 <= response.status_code < 500 and response.get_json()["message"]
    assert "Access-Control-Allow-Origin" not in response.headers
    assert _count(app_sessions) == 0


def test_tdb_cors_preflight_follows_tdb_rule(client):
    headers = {
        "Origin": "https://localhost",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    response = client.options("/derived_scalars", headers=headers)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://localhost"
    assert (
        response.headers["Access-Control-Allow-Methods"]
        == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    )
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Access-Control-Allow-Headers"] == "content-type"
    other = client.options(
        "/derived_scalars", headers={**headers, "Origin": "http://localhost.evil.com"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_the_web_app_never_imports_torch_or_the_worker(tmp_path, sqlite_url, golden_model_dir):
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(TDB["request"]))
    settings = {
        "data_dir": str(tmp_path),
        "database_url": sqlite_url,
        "broker_url": f"filesystem://{tmp_path}/broker",
        "model": str(golden_model_dir),
    }
    code = f"""
import json, sys
from api.app import create_app
client = create_app({settings!r}).test_client()
request = json.load(open({str(request_file)!r}))
assert client.post("/v1/batched_tdb", json=request).status_code == 202
assert client.get("/openapi.json").status_code == 200
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "worker", "transformers")]
print(json.dumps(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
