"""describe_runs: one run per sub-request, with canonical ablations; losses read back."""

from __future__ import annotations

import json

from models.store.runs import canonical_ablations, describe_runs, prompt_hash, run_losses
from tests.conftest import GOLDEN_CASES


def _case(prefix: str) -> dict:
    return next(c for c in GOLDEN_CASES if c["name"].startswith(prefix))


def test_batched_tdb_gives_one_run_per_sub_request():
    request = _case("061")["request"]
    runs = describe_runs("batched_tdb", request)
    assert [r.has_ablations for r in runs] == [False, True]
    assert runs[0].prompt == runs[1].prompt == request["subRequests"][0]["prompt"]
    assert runs[0].target_tokens == [" Germany"]
    assert runs[0].distractor_tokens == [" France"]
    assert runs[0].ablations == "[]"
    assert json.loads(runs[1].ablations)[0]["nodeIndex"]["layerIndex"] == 1
    assert runs[0].prompt_hash == prompt_hash(runs[0].prompt)


def test_batched_reads_loss_config_and_ablation_specs():
    request = _case("043")["request"]
    runs = describe_runs("batched", request)
    assert len(runs) == len(request["inferenceSubRequests"])
    assert runs[0].target_tokens == [" outside"]
    assert runs[1].distractor_tokens == [" party"]


def test_single_routes_give_one_run_and_model_info_none():
    case = _case("002")
    runs = describe_runs(case["endpoint"], case["request"])
    assert len(runs) == 1
    assert runs[0].prompt == case["request"]["inferenceRequestSpec"]["prompt"]
    assert describe_runs("model_info", None) == []


def test_canonical_ablations_ignore_order_and_int_values():
    a = {
        "nodeIndex": {
            "nodeType": "mlp_neuron",
            "tensorIndices": [1, 2],
            "layerIndex": 0,
            "passType": "forward",
        },
        "value": 0,
    }
    b = {
        "nodeIndex": {
            "nodeType": "attention_head",
            "tensorIndices": [3, 0, 1],
            "layerIndex": 1,
            "passType": "forward",
        },
        "value": 1.5,
    }
    assert canonical_ablations([a, b]) == canonical_ablations([b, {**a, "value": 0.0}])
    assert canonical_ablations(None) == canonical_ablations([]) == "[]"


def test_run_losses_follow_run_order():
    case = _case("061")
    losses = run_losses("batched_tdb", case["response"])
    subs = case["response"]["inferenceSubResponses"]
    assert losses == [s["inferenceResponse"]["inferenceAndTokenData"]["loss"] for s in subs]
    single = _case("002")
    assert run_losses("derived_scalars", single["response"]) == [
        single["response"]["inferenceAndTokenData"]["loss"]
    ]
