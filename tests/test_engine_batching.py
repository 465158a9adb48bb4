"""Batching invariants (protocol.md §8 items 1-3, 17, 18; engine.md §10.27, §5.1): a request
answers the same alone or inside a batch, node lists are unions over the batch, and ablations
take effect where they say. All on the golden model through `worker.engine.run`."""

from __future__ import annotations

import pytest
import torch

from tests import engine_helpers as helpers
from tests.engine_helpers import (
    LN_F_ABLATION,
    ablation,
    assert_close,
    ds,
    encode,
    hooked_forward,
    inference_spec,
    logit_diff,
    mtk,
    node,
    node_key,
    run_batched,
    saved,
    sub_request,
    tdb_spec,
    token_data,
    values_by_node,
)
from worker.engine import run

golden = helpers.golden

PROMPT_A = "The cat sat on the mat"
PROMPT_B = "A dog ran in the park"  # same length as A (6 tokens)
LOSS = logit_diff([" and"], [" the"])
NODE_TABLE = {
    "write_norm": ["resid_post_embedding_norm", "mlp_write_norm", "unflattened_attn_write_norm"],
    "act_times_grad": [
        "token_attribution",
        "mlp_act_times_grad",
        "unflattened_attn_act_times_grad",
    ],
}
LOGITS = {"logits": ["logits"]}


def _spec(prompt: str = PROMPT_A, ablations=None) -> dict:
    return inference_spec(prompt, loss=LOSS, ablations=[*(ablations or []), LN_F_ABLATION])


@pytest.fixture(scope="module")
def busy_neuron(golden) -> int:
    """The layer-0 MLP neuron with the largest total |post| on PROMPT_A."""
    _, hooks = hooked_forward(golden, encode(golden, PROMPT_A))
    return int(saved(hooks, "mlp.post_act", 0).abs().sum(dim=0).argmax())


def _data(answer: dict, name: str) -> dict:
    return answer["processingResponseDataByName"][name]


def assert_same_up_to_rounding(actual: list[float], expected: list[float], msg: str = "") -> None:
    """Relative 1e-5, measured against each list's largest magnitude: a batch of two runs its
    matrix products with other shapes than a batch of one, so even the same prompt twice ([A, A])
    differs from A alone by ~1e-6 of the largest value; small entries carry that absolute error."""
    scale = max((abs(v) for v in expected), default=0.0)
    assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=msg)


# --- protocol §8 item 1: wrapping is transparent ------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        mtk(NODE_TABLE, k=5),
        mtk(LOGITS, k=10, token_index=2),
        mtk({"write_norm": NODE_TABLE["write_norm"]}, k=4),
    ],
    ids=["node-table", "logits-token-2", "forward-only"],
)
def test_single_route_equals_the_same_spec_inside_a_batch(golden, spec):
    alone = run(
        "multiple_top_k_derived_scalars",
        {"inferenceRequestSpec": _spec(), "multipleTopKDerivedScalarsRequestSpec": spec},
        golden,
    )
    neighbours = {
        "before": ds("mlp_post_act", 1, 3),
        "wrapped": spec,
        "after": mtk({"direction_write": ["mlp_write_to_final_residual_grad"]}, k=2),
    }
    (batched,) = run_batched(golden, [sub_request(_spec(), neighbours)])
    single, inside = alone["multipleTopKDerivedScalarsResponseData"], _data(batched, "wrapped")
    assert inside["nodeIndices"] == single["nodeIndices"]
    assert inside["activationsByGroupId"] == single["activationsByGroupId"]
    assert (
        inside["intermediateSumActivationsByDstByGroupId"]
        == single["intermediateSumActivationsByDstByGroupId"]
    )
    assert alone["inferenceAndTokenData"]["loss"] == token_data(batched)["loss"]


def test_derived_scalars_route_equals_the_same_spec_inside_a_batch(golden):
    spec = ds("mlp_act_times_grad", 1, 42)
    alone = run(
        "derived_scalars",
        {"inferenceRequestSpec": _spec(), "derivedScalarsRequestSpec": spec},
        golden,
    )
    (batched,) = run_batched(golden, [sub_request(_spec(), {"x": mtk(LOGITS, k=1), "ds": spec})])
    assert _data(batched, "ds") == alone["derivedScalarsResponseData"]


# --- protocol §8 items 2, 17; engine §10.27: union semantics ------------------------------------


@pytest.fixture(scope="module")
def union_case(golden, busy_neuron):
    """A (clean) and B (a neuron ablated) alone and together, sharing the spec name "table"."""
    ablated = [ablation("mlp.post_act", ["All", busy_neuron], 0, 0.0)]
    sub_a = sub_request(_spec(PROMPT_A), {"table": mtk(NODE_TABLE, k=4)})
    sub_b = sub_request(_spec(PROMPT_B, ablated), {"table": mtk(NODE_TABLE, k=4)})
    (solo_a,) = run_batched(golden, [sub_a])
    (solo_b,) = run_batched(golden, [sub_b])
    both = run_batched(golden, [sub_a, sub_b])
    return solo_a, solo_b, both


def test_batched_node_list_is_the_union_of_the_solo_lists_in_batch_order(union_case):
    solo_a, solo_b, both = union_case
    solo = [node_key(n) for s in (solo_a, solo_b) for n in _data(s, "table")["nodeIndices"]]
    expected = list(dict.fromkeys(solo))
    for answer in both:
        assert [node_key(n) for n in _data(answer, "table")["nodeIndices"]] == expected


def test_sub_responses_share_identical_node_indices(union_case):
    _, _, (first, second) = union_case
    assert _data(first, "table")["nodeIndices"] == _data(second, "table")["nodeIndices"]


@pytest.mark.parametrize("which", [0, 1])
def test_batched_values_agree_with_solo_values(union_case, which):
    solo = union_case[which]
    batched = union_case[2][which]
    for group in NODE_TABLE:
        alone = values_by_node(_data(solo, "table"), group)
        together = values_by_node(_data(batched, "table"), group)
        keys = list(alone)
        assert_same_up_to_rounding([together[k] for k in keys], [alone[k] for k in keys], msg=group)


def test_tdb_batch_of_clean_and_ablated_is_the_union_of_singles(golden, busy_neuron):
    """engine.md §10.27 on the TDB route: a clean and an ablated TdbRequestSpec."""
    clean = tdb_spec(PROMPT_A, [" and"], [" the"], k=3)
    ablated = dict(
        clean, nodeAblations=[{"nodeIndex": node("mlp_neuron", [2, busy_neuron], 0), "value": 0.0}]
    )
    singles = [
        run("batched_tdb", {"subRequests": [s]}, golden)["inferenceSubResponses"][0]
        for s in (clean, ablated)
    ]
    batch = run("batched_tdb", {"subRequests": [clean, ablated]}, golden)["inferenceSubResponses"]
    union = {node_key(n) for s in singles for n in _data(s, "topKComponents")["nodeIndices"]}
    for single, answer in zip(singles, batch, strict=True):
        data = _data(answer, "topKComponents")
        assert {node_key(n) for n in data["nodeIndices"]} == union
        for group in ("act_times_grad", "write_norm", "direction_write", "activation"):
            alone = values_by_node(_data(single, "topKComponents"), group)
            together = values_by_node(data, group)
            assert_close(
                [together[k] for k in alone], list(alone.values()), rtol=2e-3, atol=2e-3, msg=group
            )


# --- neighbour independence ----------------------------------------------------------------------


NEIGHBOUR_GROUPS = {"act_times_grad": ["mlp_act_times_grad", "unflattened_attn_act_times_grad"]}
NEIGHBOUR_SPECS = {
    "all": mtk(NEIGHBOUR_GROUPS, k=None),
    "column": ds("resid_post_mlp", 2, 5, "backward"),
}


@pytest.fixture(scope="module")
def neighbour_case(golden):
    """PROMPT_A alone, next to itself, and next to PROMPT_B (all with full act-times-grad lists)."""

    def first(*prompts):
        return run_batched(golden, [sub_request(_spec(p), NEIGHBOUR_SPECS) for p in prompts])[0]

    return first(PROMPT_A), first(PROMPT_A, PROMPT_A), first(PROMPT_A, PROMPT_B)


def test_a_sub_request_does_not_depend_on_its_neighbour(neighbour_case):
    alone, _, together = neighbour_case
    solo_values = values_by_node(_data(alone, "all"), "act_times_grad")
    batched_values = values_by_node(_data(together, "all"), "act_times_grad")
    assert set(batched_values) == set(solo_values)
    keys = list(solo_values)
    assert_same_up_to_rounding([batched_values[k] for k in keys], [solo_values[k] for k in keys])
    assert_same_up_to_rounding(
        _data(together, "column")["activations"], _data(alone, "column")["activations"]
    )
    assert token_data(together)["loss"] == pytest.approx(token_data(alone)["loss"], rel=1e-5)


def test_the_neighbour_prompt_does_not_matter_at_equal_batch_shape(neighbour_case):
    """Next to itself or next to another prompt of the same length: the same numbers."""
    _, twin, other = neighbour_case
    twin_values = values_by_node(_data(twin, "all"), "act_times_grad")
    other_values = values_by_node(_data(other, "all"), "act_times_grad")
    keys = list(twin_values)
    assert_close(
        [other_values[k] for k in keys], [twin_values[k] for k in keys], rtol=1e-6, atol=1e-9
    )
    assert token_data(other)["loss"] == pytest.approx(token_data(twin)["loss"], rel=1e-6)


# --- protocol §8 item 18: shape and order of the batched response -------------------------------


def test_sub_responses_and_spec_keys_keep_request_order(golden):
    processing = {
        "zeta": mtk(LOGITS, k=2, token_index=-1),
        "alpha": ds("mlp_post_act", 0, 1),
        "mid": mtk({"write_norm": ["mlp_write_norm"]}, k=1),
        "beta": {
            "tokenScoringType": "upvoted_output_tokens",
            "numTokens": 3,
            "dependsOnSpecName": "mid",
        },
    }
    prompts = [PROMPT_B, PROMPT_A, "Rome is the capital of"]
    answers = run_batched(golden, [sub_request(_spec(p), processing) for p in prompts])
    assert [token_data(a)["tokensAsInts"] for a in answers] == [encode(golden, p) for p in prompts]
    for answer in answers:
        assert list(answer["processingResponseDataByName"]) == ["zeta", "alpha", "mid", "beta"]


# --- protocol §8 item 3; engine §5.1: ablations ---------------------------------------------------


def test_zeroing_one_neuron_everywhere_changes_logits_and_attributions(golden, busy_neuron):
    processing = {
        "logits": mtk(LOGITS, k=5, token_index=-1),
        "table": mtk(NODE_TABLE, k=5),
        "neuron": ds("mlp_post_act", 0, busy_neuron),
    }
    zeroed = [ablation("mlp.post_act", ["All", busy_neuron], 0, 0.0)]
    (clean,) = run_batched(golden, [sub_request(_spec(), processing)])
    (ablated,) = run_batched(golden, [sub_request(_spec(ablations=zeroed), processing)])
    assert _data(ablated, "neuron")["activations"] == [0.0] * len(encode(golden, PROMPT_A))
    assert any(v != 0 for v in _data(clean, "neuron")["activations"])
    assert (
        _data(ablated, "logits")["activationsByGroupId"]["logits"]
        != _data(clean, "logits")["activationsByGroupId"]["logits"]
    )
    for kind in ("mlp_neuron", "attention_head"):

        def listed(answer, kind=kind):
            data = _data(answer, "table")
            return [
                v
                for n, v in zip(
                    data["nodeIndices"], data["activationsByGroupId"]["act_times_grad"], strict=True
                )
                if n["nodeType"] == kind
            ]

        assert listed(ablated) != listed(clean), kind


def _post_act_columns(golden, ablations, neuron: int) -> dict[int, list[float]]:
    n = golden.weights.n_layers
    processing = {f"l{layer}": ds("mlp_post_act", layer, neuron) for layer in range(n)}
    (answer,) = run_batched(
        golden, [sub_request(inference_spec(PROMPT_A, ablations=ablations), processing)]
    )
    return {layer: _data(answer, f"l{layer}")["activations"] for layer in range(n)}


def test_ablation_with_null_layer_index_hits_every_layer(golden):
    neuron = 9
    columns = _post_act_columns(
        golden, [ablation("mlp.post_act", ["All", neuron], None, 0.0)], neuron
    )
    for layer, values in columns.items():
        assert values == [0.0] * len(values), f"layer {layer}"
    others = _post_act_columns(
        golden, [ablation("mlp.post_act", ["All", neuron], None, 0.0)], neuron + 1
    )
    assert all(any(v != 0 for v in values) for values in others.values())


def test_ablation_with_a_layer_index_hits_only_that_layer(golden):
    neuron = 9
    clean = _post_act_columns(golden, None, neuron)
    columns = _post_act_columns(golden, [ablation("mlp.post_act", ["All", neuron], 1, 0.0)], neuron)
    assert columns[0] == clean[0]
    assert columns[1] == [0.0] * len(columns[1])
    assert any(v != 0 for v in columns[2])
    assert torch.tensor(columns[2]).ne(torch.tensor(clean[2])).any()
