"""TDB request conversion (protocol.md §6) against the spec's worked example and its tables."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from models.errors import RequestValidationError
from models.wire.enums import ComponentTypeForAttention, ComponentTypeForMlp, GroupId
from models.wire.protocol import (
    MultipleTopKDerivedScalarsRequestSpec,
    ScoredTokensRequestSpec,
    TdbRequestSpec,
    TokenPairAttributionRequestSpec,
    parse_request,
    to_wire,
)
from models.wire.tdb import (
    component_groups,
    convert_tdb_request,
    current_token_index,
    keeps_loss,
)


def shared_dir() -> Path:
    env = os.environ.get("ACTQ_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def appendix_b() -> tuple[dict, dict]:
    """The request and its conversion from protocol.md Appendix B."""
    text = (shared_dir() / "spec" / "protocol.md").read_text(encoding="utf-8")
    start = text.index("## Appendix B")
    request, converted = re.findall(r"```json\n(.*?)```", text[start:], re.S)[:2]
    return json.loads(request), json.loads(converted)


def without_spec_type(obj):
    if isinstance(obj, dict):
        return {k: without_spec_type(v) for k, v in obj.items() if k != "specType"}
    if isinstance(obj, list):
        return [without_spec_type(v) for v in obj]
    return obj


def spec(**changes) -> TdbRequestSpec:
    body = {
        "prompt": "Hello world!",
        "targetTokens": ["."],
        "distractorTokens": ["!"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": 4,
        "hideEarlyLayersWhenAblating": False,
    }
    body.update(changes)
    return parse_request("batched_tdb", {"subRequests": [body]}).sub_requests[0]


def node(tensor_indices, node_type="mlp_neuron", layer_index=1) -> dict:
    return {
        "nodeType": node_type,
        "tensorIndices": tensor_indices,
        "layerIndex": layer_index,
        "passType": "forward",
    }


HEAD = node([5, 2, 3], "attention_head")


def test_appendix_b_conversion_is_reproduced():
    request, expected = appendix_b()
    first = parse_request("batched_tdb", request).sub_requests[0]
    expected = without_spec_type(expected)
    sums = expected["processingRequestSpecByName"]["componentSumsForTokenDisplay"]
    sums["dstListByGroupId"] = expected["processingRequestSpecByName"]["topKComponents"][
        "dstListByGroupId"
    ]
    assert to_wire(convert_tdb_request(first)) == expected


def test_converted_specs_are_written_without_spec_type():
    wire = to_wire(convert_tdb_request(spec()))
    assert all("specType" not in s for s in wire["processingRequestSpecByName"].values())


def test_processing_specs_and_their_kinds():
    specs = convert_tdb_request(spec()).processing_request_spec_by_name
    assert list(specs) == [
        "topKComponents",
        "componentSumsForTokenDisplay",
        "upvotedOutputTokens",
        "inputTokensThatUpvoteMlp",
        "inputTokensThatUpvoteAttnQ",
        "inputTokensThatUpvoteAttnK",
        "tokenPairAttribution",
        "topOutputTokenLogits",
    ]
    kinds = [type(s) for s in specs.values()]
    assert kinds == [MultipleTopKDerivedScalarsRequestSpec] * 2 + [ScoredTokensRequestSpec] * 4 + [
        TokenPairAttributionRequestSpec,
        MultipleTopKDerivedScalarsRequestSpec,
    ]
    assert specs["topKComponents"].top_and_bottom_k == 4
    assert specs["componentSumsForTokenDisplay"].top_and_bottom_k == 1
    logits = specs["topOutputTokenLogits"]
    assert (logits.top_and_bottom_k, logits.token_index) == (100, -1)
    assert to_wire(logits)["dstListByGroupId"] == {"logits": ["logits"]}


def test_component_groups_follow_the_requested_types():
    groups = component_groups(
        ComponentTypeForMlp.AUTOENCODER_LATENT, ComponentTypeForAttention.ATTENTION_HEAD
    )
    assert list(groups) == [
        GroupId.WRITE_NORM,
        GroupId.ACT_TIMES_GRAD,
        GroupId.DIRECTION_WRITE,
        GroupId.ACTIVATION,
    ]
    assert [d.value for d in groups[GroupId.ACTIVATION]] == [
        "always_one",
        "online_mlp_autoencoder_latent",
        "attn_qk_probs",
    ]
    sums = convert_tdb_request(
        spec(componentTypeForMlp="autoencoder_latent")
    ).processing_request_spec_by_name["componentSumsForTokenDisplay"]
    assert sums.dst_list_by_group_id[GroupId.ACTIVATION][1].value == "mlp_post_act"


def test_ablations_then_the_final_layer_norm_scale_ablation():
    converted = convert_tdb_request(
        spec(
            nodeAblations=[
                {"nodeIndex": HEAD, "value": 0.5},
                {
                    "nodeIndex": {**node([2, 7]), "passType": "backward", "layerIndex": None},
                    "value": 0,
                },
            ]
        )
    )
    wire = to_wire(converted)["inferenceRequestSpec"]["ablationSpecs"]
    assert wire == [
        {
            "index": {
                "activationLocationType": "attn.qk_probs",
                "tensorIndices": [5, "All", 3],
                "layerIndex": 1,
                "passType": "forward",
            },
            "value": 0.5,
        },
        {
            "index": {
                "activationLocationType": "mlp.post_act",
                "tensorIndices": [2, 7],
                "layerIndex": None,
                "passType": "forward",
            },
            "value": 0.0,
        },
        {
            "index": {
                "activationLocationType": "resid.ln_f.scale",
                "tensorIndices": ["All", "All"],
                "layerIndex": None,
                "passType": "backward",
            },
            "value": 0.0,
        },
    ]


def test_no_ablations_still_get_the_final_layer_norm_scale_ablation():
    ablations = convert_tdb_request(spec()).inference_request_spec.ablation_specs
    assert [a.index.activation_location_type.value for a in ablations] == ["resid.ln_f.scale"]


def test_ablation_of_an_unknown_node_type_fails_with_its_path():
    with pytest.raises(RequestValidationError) as info:
        convert_tdb_request(
            spec(nodeAblations=[{"nodeIndex": node([0, 0], "layer"), "value": 0}]), "subRequests.2"
        )
    assert info.value.path == "subRequests.2.nodeAblations.0.nodeIndex.nodeType"


@pytest.mark.parametrize(
    ("upstream", "downstream", "kept"),
    [
        (None, None, True),
        (node([3, 1]), None, False),
        ({"nodeIndex": HEAD, "attentionTraceType": "Q"}, None, False),
        ({"nodeIndex": HEAD, "attentionTraceType": "V"}, None, True),
        (
            {"nodeIndex": HEAD, "attentionTraceType": "V"},
            {"nodeIndex": node([6, 1], layer_index=2)},
            False,
        ),
    ],
)
def test_loss_is_kept_as_in_the_table_of_6_3(upstream, downstream, kept):
    if upstream is not None and "nodeIndex" not in upstream:
        upstream = {"nodeIndex": upstream}
    tdb_spec = spec(upstreamNodeToTrace=upstream, downstreamNodeToTrace=downstream)
    assert keeps_loss(tdb_spec) is kept
    loss = convert_tdb_request(tdb_spec).inference_request_spec.loss_fn_config
    assert (loss is not None) is kept
    if kept:
        assert to_wire(loss) == {
            "name": "logit_diff",
            "targetTokens": ["."],
            "distractorTokens": ["!"],
        }


def test_trace_config_of_an_upstream_and_a_downstream_node():
    ignored = {"nodeIndex": node([0, 0]), "preOrPostAct": "post", "detachLayerNormScale": False}
    upstream = {"nodeIndex": HEAD, "attentionTraceType": "V", "downstreamTraceConfig": ignored}
    downstream = {"nodeIndex": node([6, 1], layer_index=2)}
    trace = convert_tdb_request(
        spec(upstreamNodeToTrace=upstream, downstreamNodeToTrace=downstream)
    )
    wire = to_wire(trace.inference_request_spec.trace_config)
    assert wire == {
        "nodeIndex": HEAD,
        "preOrPostAct": "pre",
        "detachLayerNormScale": True,
        "attentionTraceType": "V",
        "downstreamTraceConfig": {
            "nodeIndex": downstream["nodeIndex"],
            "preOrPostAct": "pre",
            "detachLayerNormScale": True,
            "attentionTraceType": None,
            "downstreamTraceConfig": None,
        },
    }


def test_downstream_node_rules_of_the_conversion():
    downstream = {"nodeIndex": node([6, 1], layer_index=2)}
    with pytest.raises(RequestValidationError) as info:
        convert_tdb_request(spec(downstreamNodeToTrace=downstream), "subRequests.0")
    assert info.value.path == "subRequests.0.downstreamNodeToTrace"
    upstream = {"nodeIndex": HEAD, "attentionTraceType": "K"}
    with pytest.raises(RequestValidationError):
        convert_tdb_request(spec(upstreamNodeToTrace=upstream, downstreamNodeToTrace=downstream))


def test_current_token_index_is_the_traced_token():
    assert current_token_index(spec()) == -1
    traced = spec(upstreamNodeToTrace={"nodeIndex": node([3, 1])})
    assert current_token_index(traced) == 3
    specs = convert_tdb_request(traced).processing_request_spec_by_name
    assert specs["topOutputTokenLogits"].token_index == 3
    untokened = spec(upstreamNodeToTrace={"nodeIndex": node([None, 1])})
    assert current_token_index(untokened) == -1
