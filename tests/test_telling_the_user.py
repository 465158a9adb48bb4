"""What the API tells a user who got something slightly wrong: an ignored (misspelled) field, an
unknown query parameter, the wrong method, a PATCH without a Content-Type, a model not served.
Flask's test client on SQLite, as tests/test_api.py."""

from __future__ import annotations

import copy

from api.cli.common import cut_middle
from api.cli.service import summary
from tests.conftest import OK_CASES

TDB = next(c for c in OK_CASES if c["name"].startswith("061"))  # clean + ablated


def _misspelled() -> dict:
    body = copy.deepcopy(TDB["request"])
    body["subRequests"][1]["nodeAblation"] = body["subRequests"][1].pop("nodeAblations")
    body["extraTopLevel"] = 1
    return body


def test_a_misspelled_field_is_accepted_and_listed_as_a_warning(client):
    response = client.post("/v1/batched_tdb", json=_misspelled())
    assert response.status_code == 202  # TDB ignores unknown keys: the body is still accepted
    warnings = response.get_json()["warnings"]
    assert [w["path"] for w in warnings] == ["subRequests.1.nodeAblation", "extraTopLevel"]
    assert {w["type"] for w in warnings} == {"unknown_field"}
    assert "'nodeAblation'" in warnings[0]["message"]
    job = client.get(response.get_json()["url"]).get_json()
    assert job["warnings"] == warnings  # stored with the job


def _finish(sessions, job_id: str) -> None:
    """Finish a submitted job with the golden response, as a worker would."""
    from models.store.jobs import claim_job, finish_job
    from models.store.runs import run_losses
    from models.wire.encoding import dumps

    with sessions.begin() as session:
        attempt = claim_job(session, job_id, "test-worker", 600)
        losses = run_losses("batched_tdb", TDB["response"])
        assert finish_job(session, job_id, attempt, dumps(TDB["response"]), losses, 0.01)


def test_a_cache_hit_names_its_source_and_keeps_its_own_warnings(client, app_sessions):
    first = client.post("/v1/batched_tdb", json=TDB["request"]).get_json()
    _finish(app_sessions, first["id"])
    body = copy.deepcopy(TDB["request"])
    body["extraTopLevel"] = 1  # ignored: the same request, so the same stored answer
    hit = client.post("/v1/batched_tdb", json=body).get_json()
    assert hit["cacheOf"] == first["id"]
    assert [w["path"] for w in hit["warnings"]] == ["extraTopLevel"]
    assert client.get(hit["url"]).get_json()["warnings"] == hit["warnings"]
    misspelled = client.post("/v1/batched_tdb", json=_misspelled()).get_json()
    assert misspelled["cacheOf"] is None  # the misspelling made it another request


def test_golden_bodies_have_no_warnings(client):
    for case in OK_CASES[:20]:
        body = client.post(f"/v1/{case['endpoint']}", json=case["request"]).get_json()
        assert body.get("warnings", []) == [], case["name"]


def test_unknown_query_parameters_on_v1_routes_are_a_400_naming_them(client):
    response = client.get("/v1/jobs?stauts=finished")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["path"] == "stauts" and "stauts" in error["message"]
    assert "status" in error["message"]  # and what the route takes
    assert client.post("/v1/batched_tdb?lable=x", json=TDB["request"]).status_code == 400
    assert client.get("/v1/runs?samePrompt=x").status_code == 400
    assert client.get("/v1/jobs?status=finished&limit=5").status_code == 200


def test_get_on_a_post_route_says_use_post_and_lists_the_routes(client):
    response = client.get("/v1/batched_tdb")
    assert response.status_code == 405
    message = response.get_json()["error"]["message"]
    assert "use POST" in message
    assert "GET /v1/jobs" in message and "POST /v1/<endpoint>" in message


def test_a_patch_without_content_type_is_told_the_header_is_missing(client, app_sessions):
    """A JSON body without its Content-Type is refused (a cross-site form could send one) with a
    415 that names the missing header; with the header it is applied."""
    from tests.runs_support import store_finished

    job_id = store_finished(app_sessions, TDB["request"], TDB["response"])
    refused = client.patch(f"/v1/runs/{job_id}/0", data='{"label": "L1H0 off"}')
    assert refused.status_code == 415
    message = refused.get_json()["error"]["message"]
    assert "Content-Type: application/json" in message and "'missing'" in message
    response = client.patch(f"/v1/runs/{job_id}/0", json={"label": "L1H0 off"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["label"] == "L1H0 off"


def test_a_model_not_served_says_how_to_serve_it(client):
    response = client.post("/v1/model_info?model=gpt2")
    assert response.status_code == 404
    message = response.get_json()["error"]["message"]
    assert "ACTQ_MODELS" in message and "ACTQ_MODEL=gpt2" in message


def test_timestamps_end_in_z(client):
    body = client.post("/v1/batched_tdb", json=TDB["request"]).get_json()
    job = client.get(body["url"]).get_json()
    assert job["createdAt"].endswith("Z")
    address = job["runs"][0]["address"]
    compared = client.get(f"/v1/compare?a={address}&b={address}").get_json()
    assert compared["a"]["createdAt"] == job["createdAt"]  # the same time, written the same way


def test_the_cli_summary_and_the_middle_cut():
    assert cut_middle("abcdefghij", 20) == "abcdefghij"
    cut = cut_middle("The capital of France is Paris and of Germany Berlin", 21)
    assert len(cut) == 21 and cut.endswith("Germany Berlin"[-10:]) and "…" in cut
    job = {
        "id": "J",
        "status": "finished",
        "endpoint": "batched_tdb",
        "model": "m",
        "label": None,
        "tags": [],
        "cacheOf": "K",
        "createdAt": "2026-12-01T10:00:00Z",
        "queuedSeconds": 0.0,
        "engineSeconds": None,
        "attempts": 0,
        "runs": [{"address": "J/0", "loss": 2.3, "hasAblations": True, "prompt": "p"}],
        "warnings": [{"message": "unknown field 'x' was ignored"}],
    }
    text = summary(job)
    assert "answered from job K (cache hit)" in text
    assert "run J/0  loss 2.3 (ablated)" in text and "warning: unknown field" in text


def test_every_option_of_every_command_has_help():
    import argparse

    from api.cli import build_parser

    missing = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif action.help is None:
                missing.append(f"{' '.join(prefix)} {action.option_strings or action.dest}")

    walk(build_parser(), ["actq"])
    assert missing == []


def test_actq_up_says_why_a_model_cannot_be_served(tmp_path):
    import os

    from tests.conftest import run_actq

    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(ACTQ_MODEL="gpt2", HF_HOME=str(tmp_path / "hf"), ACTQ_DATA_DIR=str(tmp_path))
    done = run_actq("up", "--port", "1", env=env, timeout=120)
    said = done.stderr.decode()
    assert done.returncode == 2 and "cannot serve gpt2" in said
    assert "huggingface-cli download gpt2" in said
