"""Cost bounds (models.checks.cost): the estimate lets every golden case and TDB's own UI
requests through with the default limits, and refuses the audit's reproductions with a 422 that
names the field driving the cost and says the estimate and the limit, on the real processes
(``actq up``, and gunicorn with PostgreSQL and Redis)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import requests

from models.checks.cost import check_cost, estimate_cost
from models.errors import RequestValidationError
from models.settings import Settings
from models.wire.protocol import parse_request
from tests.conftest import ALL_GOLDEN_CASES

DEFAULTS = Settings()
LIMITS = (DEFAULTS.max_response_bytes, DEFAULTS.max_job_memory_bytes)


def tdb_sub(prompt: str, k: int) -> dict:
    return {
        "prompt": prompt,
        "targetTokens": [" mat"],
        "distractorTokens": [" dog"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": k,
        "hideEarlyLayersWhenAblating": False,
        "nodeAblations": [],
    }


def tdb_request(tokens: int, subs: int, k: int) -> dict:
    return {"subRequests": [tdb_sub("Once" + " the" * (tokens - 1), k)] * subs}


def batched_top_k_and_scored(tokens: int, k: int, num_tokens: int) -> dict:
    """The audit's ``/v1/batched``: one top-k spec of K 1000, one scored-tokens spec of 1000."""
    groups = {
        "write_norm": ["mlp_write_norm", "unflattened_attn_write_norm"],
        "activation": ["mlp_post_act", "attn_qk_probs"],
    }
    specs = {
        "topKComponents": {"dstListByGroupId": groups, "topAndBottomK": k, "tokenIndex": None},
        "scored": {
            "tokenScoringType": "upvoted_output_tokens",
            "numTokens": num_tokens,
            "dependsOnSpecName": "topKComponents",
        },
    }
    prompt = "Once" + " the" * (tokens - 1)
    sub = {"inferenceRequestSpec": {"prompt": prompt}, "processingRequestSpecByName": specs}
    return {"inferenceSubRequests": [sub]}


@pytest.fixture(scope="module")
def gpt2_small(engine_model):
    """gpt2-small's sizes (no weights are needed for an estimate)."""
    meta = replace(
        engine_model.meta, n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=1024
    )
    return meta, engine_model.tokenizer


def _cost(endpoint, request, model):
    meta, tokenizer = model
    return estimate_cost(endpoint, parse_request(endpoint, request), meta, tokenizer)


ESTIMATED_CASES = [c for c in ALL_GOLDEN_CASES if c["endpoint"] != "model_info" and not c.get("error")]


@pytest.mark.parametrize("case", ESTIMATED_CASES, ids=lambda c: c["name"])
def test_every_golden_case_is_within_the_default_limits(case, engine_model):
    try:
        parsed = parse_request(case["endpoint"], case["request"])
    except RequestValidationError:
        pytest.skip("a parse error case")
    cost = estimate_cost(case["endpoint"], parsed, engine_model.meta, engine_model.tokenizer)
    check_cost(cost, *LIMITS)


@pytest.mark.parametrize(("tokens", "k"), [(64, 100), (100, 300), (200, 300)])
def test_tdb_ui_requests_on_gpt2_small_are_within_the_default_limits(gpt2_small, tokens, k):
    check_cost(_cost("batched_tdb", tdb_request(tokens, 2, k), gpt2_small), *LIMITS)


@pytest.mark.parametrize(
    ("endpoint", "request_", "path"),
    [
        ("batched_tdb", tdb_request(127, 8, 5000), "subRequests.0.topAndBottomKForNodeTable"),
        ("batched_tdb", tdb_request(127, 1, 5000), "subRequests.0.topAndBottomKForNodeTable"),
        (
            "batched",
            batched_top_k_and_scored(60, 1000, 1000),
            "inferenceSubRequests.0.processingRequestSpecByName.scored.numTokens",
        ),
    ],
    ids=["tdb-8x127-k5000", "tdb-1x127-k5000", "batched-k1000-n1000"],
)
def test_the_audit_s_requests_on_gpt2_small_are_refused(gpt2_small, endpoint, request_, path):
    with pytest.raises(RequestValidationError) as refused:
        check_cost(_cost(endpoint, request_, gpt2_small), *LIMITS)
    assert refused.value.path == path
    assert "estimated" in refused.value.message and "ACTQ_MAX_" in refused.value.message


def test_the_estimate_grows_with_each_factor(gpt2_small):
    base = _cost("batched_tdb", tdb_request(20, 1, 10), gpt2_small)
    for bigger in (tdb_request(40, 1, 10), tdb_request(20, 2, 10), tdb_request(20, 1, 20)):
        cost = _cost("batched_tdb", bigger, gpt2_small)
        assert cost.response_bytes > base.response_bytes
        assert cost.memory_bytes > base.memory_bytes


# --- on the real processes ------------------------------------------------------------------


@pytest.fixture(params=["embedded", "gunicorn"])
def served(request):
    name = "embedded_stack" if request.param == "embedded" else "full_stack"
    return request.getfixturevalue(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("endpoint", "make", "path", "limit"),
    [
        (
            "batched_tdb",
            lambda: tdb_request(63, 8, 5000),  # the golden model's context is 64 tokens
            "subRequests.0.topAndBottomKForNodeTable",
            "ACTQ_MAX_RESPONSE_BYTES",
        ),
        (
            "batched",
            lambda: batched_top_k_and_scored(60, 1000, 1000),
            "inferenceSubRequests.0.processingRequestSpecByName.scored.numTokens",
            "ACTQ_MAX_RESPONSE_BYTES",
        ),
    ],
    ids=["tdb-8-sub-requests-k5000", "batched-k1000-n1000"],
)
def test_a_request_over_the_cost_limits_is_refused_before_it_is_queued(
    served, endpoint, make, path, limit
):
    before = requests.get(f"{served.url}/v1/jobs?limit=500", timeout=30).json()
    response = requests.post(f"{served.url}/v1/{endpoint}?fresh=1", json=make(), timeout=60)
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert error["path"] == path
    assert "estimated at" in error["message"] and limit in error["message"]
    after = requests.get(f"{served.url}/v1/jobs?limit=500", timeout=30).json()
    assert _ids(after) == _ids(before)  # nothing was stored


@pytest.mark.slow
def test_a_tdb_ui_request_is_served(served):
    request = copy.deepcopy(tdb_request(20, 2, 100))
    request["subRequests"][0]["nodeAblations"] = [
        {
            "nodeIndex": {
                "nodeType": "mlp_neuron",
                "tensorIndices": [2, 10],
                "layerIndex": 1,
                "passType": "forward",
            },
            "value": 0.0,
        }
    ]
    response = requests.post(
        f"{served.url}/v1/batched_tdb?wait=60&fresh=1", json=request, timeout=120
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["inferenceSubResponses"]) == 2


def _ids(listing) -> set[str]:
    jobs = listing["jobs"] if isinstance(listing, dict) else listing
    return {job["id"] for job in jobs}
