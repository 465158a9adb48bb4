"""Wire models: golden round trips, spec resolution, the reading rules of protocol.md §1.2."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest

from models.errors import NotFoundError, RequestValidationError
from models.wire.encoding import dumps, dumps_bytes
from models.wire.enums import ActivationLocationType, PassType, TensorType
from models.wire.protocol import (
    REQUEST_MODELS,
    RESPONSE_MODELS,
    BatchedRequest,
    DerivedAttentionScalarsRequestSpec,
    DerivedScalarsRequestSpec,
    InferenceSubRequest,
    MirroredNodeIndex,
    MultipleTopKDerivedScalarsRequestSpec,
    ScoredTokensRequestSpec,
    Tensor2D,
    TokenPairAttributionRequestSpec,
    parse_as,
    parse_request,
    tdb_camel,
    to_wire,
)


def shared_dir() -> Path:
    env = os.environ.get("ACTQ_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def golden_cases() -> list[tuple[str, dict]]:
    files = sorted((shared_dir() / "golden" / "cases").glob("*.json"))
    return [(f.stem, json.loads(f.read_text(encoding="utf-8"))) for f in files]


CASES = golden_cases()
REQUEST_CASES = [
    (n, c) for n, c in CASES if c["endpoint"] != "model_info"
]  # model_info has no body
RESPONSE_CASES = [(n, c) for n, c in CASES if c.get("response") is not None]


def tdb_text(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def test_golden_cases_are_present():
    assert len(CASES) >= 20


@pytest.mark.parametrize(("name", "case"), REQUEST_CASES, ids=[n for n, _ in REQUEST_CASES])
def test_golden_request_round_trips_to_the_same_text(name, case):
    raw = tdb_text(case["request"])
    parsed = parse_request(case["endpoint"], raw.encode())
    assert dumps(to_wire(parsed)) == raw


@pytest.mark.parametrize(("name", "case"), RESPONSE_CASES, ids=[n for n, _ in RESPONSE_CASES])
def test_golden_response_round_trips_to_the_same_text(name, case):
    raw = tdb_text(case["response"])
    parsed = parse_as(RESPONSE_MODELS[case["endpoint"]], raw)
    assert dumps(to_wire(parsed)) == raw


def test_endpoint_tables():
    assert set(REQUEST_MODELS) == {
        "derived_scalars",
        "derived_attention_scalars",
        "multiple_top_k_derived_scalars",
        "batched",
        "batched_tdb",
    }
    assert set(RESPONSE_MODELS) == set(REQUEST_MODELS) | {"model_info"}


def test_tdb_camel_rule():
    assert tdb_camel("dst_list_by_group_id") == "dstListByGroupId"
    assert tdb_camel("top_and_bottom_k_for_node_table") == "topAndBottomKForNodeTable"
    assert tdb_camel("n_layers") == "nLayers"
    assert tdb_camel("tensor_0d") == "tensor0d"
    assert tdb_camel("prompt") == "prompt"


# -- spec resolution (protocol.md §1.4) ------------------------------------------------------

INFERENCE_SPEC = {"prompt": "Hello world"}
ATTENTION_SHAPED = {"dst": "unflattened_attn_write_norm", "layerIndex": 0, "activationIndex": 1}


def batched_with(spec: dict) -> dict:
    return {
        "inferenceSubRequests": [
            {"inferenceRequestSpec": INFERENCE_SPEC, "processingRequestSpecByName": {"s": spec}}
        ]
    }


def only_spec(request: BatchedRequest):
    return request.inference_sub_requests[0].processing_request_spec_by_name["s"]


def test_attention_shaped_spec_in_a_batch_resolves_as_derived_scalars():
    spec = only_spec(parse_request("batched", batched_with(ATTENTION_SHAPED)))
    assert type(spec) is DerivedScalarsRequestSpec
    assert spec.pass_type is PassType.FORWARD


def test_explicit_spec_type_selects_the_type():
    body = batched_with({**ATTENTION_SHAPED, "specType": "derived_attention_scalars_request_spec"})
    spec = only_spec(parse_request("batched", body))
    assert type(spec) is DerivedAttentionScalarsRequestSpec
    assert dumps(to_wire(spec)).startswith('{"specType":"derived_attention_scalars_request_spec",')


def test_structural_resolution_of_each_spec_kind():
    mtk = {"dstListByGroupId": {"write_norm": ["mlp_write_norm"]}, "dst": "mlp_post_act"}
    scored = {"tokenScoringType": "upvoted_output_tokens", "numTokens": 3, "dependsOnSpecName": "a"}
    pair = {"numTokensAttendedTo": 3, "dependsOnSpecName": "a"}
    kinds = [
        type(only_spec(parse_request("batched", batched_with(spec))))
        for spec in (mtk, scored, pair)
    ]
    assert kinds == [
        MultipleTopKDerivedScalarsRequestSpec,
        ScoredTokensRequestSpec,
        TokenPairAttributionRequestSpec,
    ]


def test_invalid_earlier_candidate_falls_through_to_the_next():
    # passType is invalid for DerivedScalarsRequestSpec; the attention spec ignores it (TDB too).
    spec = only_spec(parse_request("batched", batched_with({**ATTENTION_SHAPED, "passType": 3})))
    assert type(spec) is DerivedAttentionScalarsRequestSpec


def test_wrong_spec_type_is_422_at_spec_type():
    body = batched_with({**ATTENTION_SHAPED, "specType": "derived_scalars"})
    with pytest.raises(RequestValidationError) as info:
        parse_request("batched", body)
    assert info.value.status == 422
    assert info.value.path == "inferenceSubRequests.0.processingRequestSpecByName.s.specType"


def test_spec_type_of_another_kind_is_422():
    body = batched_with({**ATTENTION_SHAPED, "specType": "scored_tokens_request_spec"})
    with pytest.raises(RequestValidationError) as info:
        parse_request("batched", body)
    assert info.value.path.endswith("processingRequestSpecByName.s.tokenScoringType")


def test_spec_type_on_the_dedicated_route():
    body = {
        "inferenceRequestSpec": INFERENCE_SPEC,
        "derivedScalarsRequestSpec": {**ATTENTION_SHAPED, "specType": "tdb_request_spec"},
    }
    with pytest.raises(RequestValidationError) as info:
        parse_request("derived_scalars", body)
    assert info.value.path == "derivedScalarsRequestSpec.specType"


def test_unresolvable_spec_names_the_spec():
    with pytest.raises(RequestValidationError) as info:
        parse_request("batched", batched_with({"foo": 1}))
    assert info.value.path == "inferenceSubRequests.0.processingRequestSpecByName.s"
    assert "dstListByGroupId" in info.value.message


def test_spec_with_present_but_invalid_fields_reports_the_first_candidate():
    with pytest.raises(RequestValidationError) as info:
        parse_request("batched", batched_with({"dst": "MLP_POST_ACT", "activationIndex": 0}))
    assert info.value.path == "inferenceSubRequests.0.processingRequestSpecByName.s.dst"
    assert "'MLP_POST_ACT'" in info.value.message


def test_spec_type_is_written_only_when_given():
    parsed = only_spec(parse_request("batched", batched_with(ATTENTION_SHAPED)))
    assert "specType" not in to_wire(parsed)
    built = ScoredTokensRequestSpec(
        token_scoring_type="upvoted_output_tokens", num_tokens=2, depends_on_spec_name="a"
    )
    assert list(to_wire(built)) == ["tokenScoringType", "numTokens", "dependsOnSpecName"]


def test_json_round_trip_with_spec_type_keeps_spec_types():
    body = batched_with({**ATTENTION_SHAPED, "specType": "derived_attention_scalars_request_spec"})
    once = parse_request("batched", body)
    twice = parse_request("batched", dumps(to_wire(once)))
    assert twice == once
    assert type(only_spec(twice)) is DerivedAttentionScalarsRequestSpec


def test_specs_built_in_python_are_accepted_by_the_union():
    spec = MultipleTopKDerivedScalarsRequestSpec(dst_list_by_group_id={"logits": ["logits"]})
    sub = InferenceSubRequest(
        inference_request_spec={"prompt": "a"}, processing_request_spec_by_name={"x": spec}
    )
    assert sub.processing_request_spec_by_name["x"] is spec
    assert to_wire(spec)["dimensionsToKeepForIntermediateSum"] == [
        "sequence_tokens",
        "attended_to_sequence_tokens",
    ]


# -- reading rules (protocol.md §1.2) --------------------------------------------------------

DS_BODY = {
    "inferenceRequestSpec": {"prompt": "Hello"},
    "derivedScalarsRequestSpec": {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 3},
}


def ds_body(**spec_changes) -> dict:
    body = copy.deepcopy(DS_BODY)
    body["derivedScalarsRequestSpec"].update(spec_changes)
    return body


def error_of(endpoint: str, body) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as info:
        parse_request(endpoint, body)
    return info.value


def test_enum_name_is_rejected():
    error = error_of("derived_scalars", ds_body(passType="FORWARD"))
    assert error.path == "derivedScalarsRequestSpec.passType"
    assert "'forward' or 'backward'" in error.message and "'FORWARD'" in error.message


def test_explicit_null_for_a_defaulted_field_is_rejected():
    assert error_of("derived_scalars", ds_body(passType=None)).path == (
        "derivedScalarsRequestSpec.passType"
    )


def test_explicit_null_where_the_type_admits_it_is_accepted():
    parsed = parse_request("derived_scalars", ds_body(layerIndex=None, numTopTokens=None))
    assert parsed.derived_scalars_request_spec.layer_index is None


def test_unknown_keys_are_ignored():
    body = ds_body(colour="blue")
    body["extra"] = {"deep": [1]}
    parsed = parse_request("derived_scalars", body)
    assert "colour" not in to_wire(parsed)["derivedScalarsRequestSpec"]


def test_snake_case_keys_are_accepted():
    body = {
        "inference_request_spec": {"prompt": "Hi", "loss_fn_config": {"name": "zero"}},
        "derived_scalars_request_spec": {"dst": "mlp_post_act", "activation_index": 5},
    }
    parsed = parse_request("derived_scalars", body)
    assert parsed.derived_scalars_request_spec.activation_index == 5
    assert to_wire(parsed)["inferenceRequestSpec"]["lossFnConfig"]["name"] == "zero"


def test_camel_case_wins_over_snake_case_in_either_order():
    first = ds_body(activationIndex=1, activation_index=2)
    second = {
        "inferenceRequestSpec": {"prompt": "Hi"},
        "derivedScalarsRequestSpec": {"activation_index": 2, "dst": "logits", "activationIndex": 1},
    }
    for body in (first, second):
        assert (
            parse_request("derived_scalars", body).derived_scalars_request_spec.activation_index
            == 1
        )


@pytest.mark.parametrize("bad", [3.0, "3", True, 1.7])
def test_ints_must_be_json_integers(bad):
    error = error_of("derived_scalars", ds_body(activationIndex=bad))
    assert error.path == "derivedScalarsRequestSpec.activationIndex"


def test_floats_accept_integers_and_write_them_as_floats():
    body = {
        "inferenceRequestSpec": {
            "prompt": "Hi",
            "ablationSpecs": [
                {
                    "index": {
                        "activationLocationType": "mlp.post_act",
                        "tensorIndices": ["All", 0],
                        "layerIndex": 0,
                        "passType": "forward",
                    },
                    "value": 0,
                }
            ],
        },
        "derivedScalarsRequestSpec": DS_BODY["derivedScalarsRequestSpec"],
    }
    parsed = parse_request("derived_scalars", body)
    assert '"value":0.0' in dumps(to_wire(parsed))


def activation_index(tensor_indices) -> dict:
    return {
        "activationLocationType": "mlp.post_act",
        "tensorIndices": tensor_indices,
        "passType": "forward",
    }


def with_within_layer_index(index: dict) -> dict:
    body = copy.deepcopy(DS_BODY)
    body["inferenceRequestSpec"]["activationIndexForWithinLayerGrad"] = index
    return body


def test_activation_tensor_indices_take_ints_and_all():
    parsed = parse_request("derived_scalars", with_within_layer_index(activation_index([2, "All"])))
    index = parsed.inference_request_spec.activation_index_for_within_layer_grad
    assert index.tensor_indices == (2, "All")
    assert index.activation_location_type is ActivationLocationType.MLP_POST_ACT


@pytest.mark.parametrize("bad", [None, "all", 1.0])
def test_activation_tensor_indices_reject_others(bad):
    error = error_of("derived_scalars", with_within_layer_index(activation_index([0, bad])))
    assert error.path == "inferenceRequestSpec.activationIndexForWithinLayerGrad.tensorIndices.1"


def tdb_body(**changes) -> dict:
    sub = {
        "prompt": "Hi",
        "targetTokens": [" a"],
        "distractorTokens": [],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": 3,
        "hideEarlyLayersWhenAblating": False,
    }
    sub.update(changes)
    return {"subRequests": [sub]}


def node(tensor_indices, node_type="mlp_neuron", layer_index=0) -> dict:
    return {
        "nodeType": node_type,
        "tensorIndices": tensor_indices,
        "layerIndex": layer_index,
        "passType": "forward",
    }


def test_node_tensor_indices_take_ints_and_null_but_not_all():
    parsed = parse_request(
        "batched_tdb", tdb_body(nodeAblations=[{"nodeIndex": node([0, None, 2]), "value": 1.5}])
    )
    assert parsed.sub_requests[0].node_ablations[0].node_index.tensor_indices == (0, None, 2)
    error = error_of(
        "batched_tdb", tdb_body(nodeAblations=[{"nodeIndex": node([0, "All"]), "value": 1}])
    )
    assert error.path == "subRequests.0.nodeAblations.0.nodeIndex.tensorIndices.1"


def test_node_indices_are_hashable_and_compare_by_all_fields():
    a = MirroredNodeIndex(
        node_type="mlp_neuron", tensor_indices=[1, 2], layer_index=0, pass_type="forward"
    )
    b = MirroredNodeIndex.model_validate(node([1, 2]))
    c = MirroredNodeIndex.model_validate(node([-1, 2]))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2


def test_error_paths_are_camel_case_even_for_snake_case_input():
    body = tdb_body()
    body["sub_requests"] = body.pop("subRequests")
    body["sub_requests"][0]["top_and_bottom_k_for_node_table"] = "3"
    del body["sub_requests"][0]["topAndBottomKForNodeTable"]
    assert error_of("batched_tdb", body).path == "subRequests.0.topAndBottomKForNodeTable"


def test_missing_required_field_path():
    body = tdb_body()
    del body["subRequests"][0]["hideEarlyLayersWhenAblating"]
    error = error_of("batched_tdb", body)
    assert error.path == "subRequests.0.hideEarlyLayersWhenAblating"
    assert error.message.startswith("Field required")


def test_dictionary_keys_stay_as_written_in_paths():
    body = batched_with({"dstListByGroupId": {"write_norm": ["mlp_write_norm", "nope"]}})
    body["inferenceSubRequests"][0]["processingRequestSpecByName"]["my_spec"] = body[
        "inferenceSubRequests"
    ][0]["processingRequestSpecByName"].pop("s")
    assert error_of("batched", body).path == (
        "inferenceSubRequests.0.processingRequestSpecByName.my_spec.dstListByGroupId.write_norm.1"
    )


def test_unknown_group_id_key_is_rejected():
    body = batched_with({"dstListByGroupId": {"WRITE_NORM": ["mlp_write_norm"]}})
    error = error_of("batched", body)
    assert (
        error.path
        == "inferenceSubRequests.0.processingRequestSpecByName.s.dstListByGroupId.WRITE_NORM"
    )


def test_malformed_json_has_no_path():
    error = error_of("batched", b'{"inferenceSubRequests": [')
    assert error.path is None and error.status == 422
    assert error.message.startswith("malformed JSON")


def test_body_that_is_not_an_object_has_no_path():
    assert error_of("batched", "[]").path is None


def test_unknown_endpoint_is_not_found():
    with pytest.raises(NotFoundError):
        parse_request("model_info", b"")


def test_error_pickles_with_its_fields():
    import pickle

    error = error_of("derived_scalars", ds_body(passType="FORWARD"))
    again = pickle.loads(pickle.dumps(error))
    assert (again.message, again.path, again.status) == (error.message, error.path, 422)


# -- response side ---------------------------------------------------------------------------


def test_tensor_union_is_discriminated_by_tensor_type():
    data = {
        "responseDataType": "multiple_top_k_derived_scalars_response_data",
        "activationsByGroupId": {"logits": [1.0]},
        "nodeIndices": [
            {
                "nodeType": "vocab_token",
                "tensorIndices": [-1, 5],
                "layerIndex": None,
                "passType": "forward",
            }
        ],
        "vocabTokenStringsForIndices": ["x"],
        "intermediateSumActivationsByDstByGroupId": {
            "logits": {"logits": {"tensorType": "tensor_2d", "value": [[1.0], [2.0]]}}
        },
    }
    body = {
        "inferenceAndTokenData": {
            "inferenceTime": 1,
            "tokensAsInts": [5],
            "tokensAsStrings": ["x"],
        },
        "multipleTopKDerivedScalarsResponseData": data,
    }
    parsed = parse_as(RESPONSE_MODELS["multiple_top_k_derived_scalars"], body)
    tensor = parsed.multiple_top_k_derived_scalars_response_data.intermediate_sum_activations_by_dst_by_group_id[
        "logits"
    ]["logits"]
    assert type(tensor) is Tensor2D and tensor.tensor_type is TensorType.TENSOR_2D
    wire = to_wire(parsed)
    assert wire["inferenceAndTokenData"]["inferenceTime"] == 1.0
    assert wire["inferenceAndTokenData"]["memoryUsedBefore"] is None
    data["activationsByGroupId"]["logits"] = [1.0, 2.0]
    with pytest.raises(RequestValidationError):
        parse_as(RESPONSE_MODELS["multiple_top_k_derived_scalars"], body)


def test_token_and_scalar_must_be_finite():
    from models.wire.protocol import TokenAndScalar

    with pytest.raises(ValueError):
        TokenAndScalar(token="a", scalar=math.inf, normalized_scalar=0.0)


# -- wirejson --------------------------------------------------------------------------------


def test_dumps_matches_tdb_encoding():
    obj = {"é": [1, 1.0, -0.0, 0.1, float("0.10000000149011612"), None, True], "k": "ü\n"}
    assert dumps(obj) == '{"é":[1,1.0,-0.0,0.1,0.10000000149011612,null,true],"k":"ü\\n"}'
    assert dumps_bytes(obj) == dumps(obj).encode("utf-8")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError):
        dumps({"x": [bad]})


def test_dumps_writes_enums_and_tuples_as_values_and_arrays():
    assert dumps({PassType.FORWARD: (PassType.BACKWARD, 1)}) == '{"forward":["backward",1]}'
