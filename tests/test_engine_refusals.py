"""Requests that pass the early checks but that the engine cannot answer meaningfully: each is a
4xx naming the spec, never a bare exception (TDB answers these with a 500)."""

from __future__ import annotations

import pytest

from models.errors import RequestValidationError
from tests import engine_helpers as helpers
from worker.engine import run

golden = helpers.golden  # module-scoped fixture

PROMPT = "When Mary and John went to the store, John gave a drink to"
LOSS = {"name": "logit_diff", "targetTokens": [" Mary"], "distractorTokens": [" John"]}


def batched(specs: dict, **inference) -> dict:
    spec = {"prompt": PROMPT, "lossFnConfig": LOSS, **inference}
    return {
        "inferenceSubRequests": [
            {"inferenceRequestSpec": spec, "processingRequestSpecByName": specs}
        ]
    }


def test_token_writes_of_per_token_attention_nodes_are_refused(golden):
    groups = {"write_norm": ["mlp_write_norm", "attn_write_norm_per_sequence_token"]}
    request = batched(
        {
            "table": {"dstListByGroupId": groups, "topAndBottomK": 2},
            "upvoted": {
                "tokenScoringType": "upvoted_output_tokens",
                "numTokens": 5,
                "dependsOnSpecName": "table",
            },
        }
    )
    with pytest.raises(RequestValidationError) as caught:
        run("batched", request, golden)
    assert caught.value.path == "inferenceSubRequests.0.processingRequestSpecByName.upvoted"
    assert "(query, key, head)" in caught.value.message


def test_input_tokens_of_the_same_table_are_answered(golden):
    groups = {"write_norm": ["mlp_write_norm", "attn_write_norm_per_sequence_token"]}
    request = batched(
        {
            "table": {"dstListByGroupId": groups, "topAndBottomK": 2},
            "read": {
                "tokenScoringType": "input_tokens_that_upvote_mlp",
                "numTokens": 5,
                "dependsOnSpecName": "table",
            },
        }
    )
    data = run("batched", request, golden)["inferenceSubResponses"][0][
        "processingResponseDataByName"
    ]
    kinds = [n["nodeType"] for n in data["read"]["nodeIndices"]]
    scored = [entry is not None for entry in data["read"]["topTokensList"]]
    assert scored == [kind == "mlp_neuron" for kind in kinds]
    assert any(scored) and not all(scored)


def test_ranking_masked_attention_logits_is_refused(golden):
    request = batched(
        {"table": {"dstListByGroupId": {"singleton": ["attn_qk_logits"]}, "topAndBottomK": 2}}
    )
    with pytest.raises(RequestValidationError) as caught:
        run("batched", request, golden)
    assert (
        caught.value.path
        == "inferenceSubRequests.0.processingRequestSpecByName.table.dstListByGroupId.singleton"
    )


def test_final_activation_residual_gradients_need_a_trace(golden):
    spec = {
        "dstListByGroupId": {"singleton": ["mlp_write_to_final_activation_residual_grad"]},
        "topAndBottomK": 2,
    }
    with pytest.raises(RequestValidationError) as caught:
        run("batched", batched({"table": spec}), golden)
    assert (
        caught.value.path == "inferenceRequestSpec.traceConfig"
        or "traceConfig" in caught.value.path
    )


def test_sub_requests_sharing_a_spec_name_must_rank_the_same_node_types(golden):
    def sub(dst: str) -> dict:
        table = {"dstListByGroupId": {"singleton": [dst]}, "topAndBottomK": 2}
        return {
            "inferenceRequestSpec": {"prompt": PROMPT},
            "processingRequestSpecByName": {"t": table},
        }

    with pytest.raises(RequestValidationError) as caught:
        run(
            "batched", {"inferenceSubRequests": [sub("mlp_post_act"), sub("attn_qk_probs")]}, golden
        )
    assert (
        caught.value.path
        == "inferenceSubRequests.0.processingRequestSpecByName.t.dstListByGroupId.singleton"
    )
