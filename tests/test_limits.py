"""Input limits: each one configurable, each refusal a 413 or 422 that names the field, and
nothing stored or queued for a refused request."""

from __future__ import annotations

import copy
import json

import pytest

from models.store.tables import Job
from tests.conftest import OK_CASES, queued_messages

CASES = {c["name"][:3]: c for c in OK_CASES}
DS, MTK, BATCHED, TDB = CASES["003"], CASES["024"], CASES["043"], CASES["061"]

LIMITS = {
    "max_body_bytes": 4000,
    "max_prompt_tokens": 12,
    "max_top_k": 5,
    "max_sub_requests": 2,
    "max_specs_per_sub_request": 1,
    "max_tags": 2,
    "max_tag_chars": 8,
    "max_label_chars": 10,
}


@pytest.fixture
def limited(tmp_path, sqlite_url, golden_model_dir):
    from api.app import create_app

    app = create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": sqlite_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
            **LIMITS,
        }
    )
    yield app.test_client()
    with app.extensions["actq.sessionmaker"]() as session:
        stored = session.query(Job).count()
    assert stored == len(queued_messages(tmp_path))  # what was refused left nothing behind


def _edited(case, edit) -> dict:
    request = copy.deepcopy(case["request"])
    edit(request)
    return request


def _refused(client, endpoint, request, status, path, query=""):
    response = client.post(f"/v1/{endpoint}{query}", json=request)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["path"] == path
    return error


def test_a_request_within_the_limits_is_accepted(limited):
    request = _edited(DS, lambda r: r["derivedScalarsRequestSpec"].update(numTopTokens=5))
    request["inferenceRequestSpec"]["prompt"] = "Once upon a time"
    assert limited.post("/v1/derived_scalars?tag=a&label=short", json=request).status_code == 202


def test_body_over_the_limit_is_413(limited):
    body = json.dumps({**TDB["request"], "padding": "x" * 5000})
    for url in ("/v1/batched_tdb", "/batched_tdb"):
        response = limited.post(url, data=body, content_type="application/json")
        assert response.status_code == 413
        error = response.get_json()["error"]
        assert error["type"] == "payload_too_large"
        assert "4000 bytes" in error["message"] and "ACTQ_MAX_BODY_BYTES" in error["message"]


def test_too_many_sub_requests(limited):
    request = _edited(TDB, lambda r: r["subRequests"].append(r["subRequests"][0]))
    error = _refused(limited, "batched_tdb", request, 422, "subRequests")
    assert (
        "more than 2 sub-requests" in error["message"]
        and "ACTQ_MAX_SUB_REQUESTS" in error["message"]
    )
    request = _edited(
        BATCHED, lambda r: r["inferenceSubRequests"].extend(r["inferenceSubRequests"][:2])
    )
    _refused(limited, "batched", request, 422, "inferenceSubRequests")


def test_too_many_processing_specs_in_a_sub_request(limited):
    specs = BATCHED["request"]["inferenceSubRequests"][0]["processingRequestSpecByName"]
    assert len(specs) > 1
    request = _edited(BATCHED, lambda r: r["inferenceSubRequests"].pop())
    path = "inferenceSubRequests.0.processingRequestSpecByName"
    _refused(limited, "batched", request, 422, path)


def test_prompt_over_the_token_limit(limited):
    error = _refused(limited, "batched_tdb", TDB["request"], 422, "subRequests.0.prompt")
    assert "ACTQ_MAX_PROMPT_TOKENS" in error["message"]
    request = _edited(DS, lambda r: r["derivedScalarsRequestSpec"].update(numTopTokens=5))
    _refused(limited, "derived_scalars", request, 422, "inferenceRequestSpec.prompt")


def _short_prompt(request: dict, key: str = "inferenceRequestSpec") -> None:
    request[key]["prompt"] = "The quick brown fox"


@pytest.mark.parametrize(
    ("case", "edit", "path"),
    [
        (
            DS,
            lambda r: (_short_prompt(r), r["derivedScalarsRequestSpec"].update(numTopTokens=6)),
            "derivedScalarsRequestSpec.numTopTokens",
        ),
        (
            MTK,
            lambda r: r["multipleTopKDerivedScalarsRequestSpec"].update(topAndBottomK=6),
            "multipleTopKDerivedScalarsRequestSpec.topAndBottomK",
        ),
        (
            TDB,
            lambda r: [
                s.update(prompt="Paris is the capital", topAndBottomKForNodeTable=1000)
                for s in r["subRequests"]
            ],
            "subRequests.0.topAndBottomKForNodeTable",
        ),
    ],
    ids=["numTopTokens", "topAndBottomK", "topAndBottomKForNodeTable"],
)
def test_top_k_sizes_over_the_limit(limited, case, edit, path):
    error = _refused(limited, case["endpoint"], _edited(case, edit), 422, path)
    assert "ACTQ_MAX_TOP_K" in error["message"]


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("?label=much-too-long-label", "label"),
        ("?tag=a&tag=b&tag=c", "tag"),
        ("?tag=much-too-long", "tag"),
        ("?tag=", "tag"),
    ],
)
def test_labels_and_tags_over_the_limits(limited, query, path):
    _refused(limited, "model_info", None, 422, path, query)


def test_the_defaults_are_generous(client):
    """With default settings the golden requests pass every limit."""
    assert client.post("/v1/batched_tdb", json=TDB["request"]).status_code == 202
    assert client.post("/v1/batched", json=BATCHED["request"]).status_code == 202
