"""`activationIndexForWithinLayerGrad` (engine.md §6.6): it moves the direction the DSTs project on
to the residual read by the named activation, without starting a backward pass of its own."""

from __future__ import annotations

from tests import engine_helpers as helpers
from tests.engine_helpers import (
    assert_close,
    inference_spec,
    mtk,
    node,
    run_batched,
    sub_request,
    trace,
    values_by_node,
)

golden = helpers.golden  # module-scoped fixture

PROMPT = "When Mary and John went to the store, John gave a drink to"
GROUPS = {
    "direction_write": [
        "mlp_write_to_final_residual_grad",
        "unflattened_attn_write_to_final_residual_grad",
    ]
}
ACTIVATION_GROUPS = {
    "direction_write": [
        "mlp_write_to_final_activation_residual_grad",
        "unflattened_attn_write_to_final_activation_residual_grad",
    ]
}


def within(location: str, indices: list, layer: int) -> dict:
    return {
        "activationLocationType": location,
        "tensorIndices": indices,
        "layerIndex": layer,
        "passType": "forward",
    }


def direction_values(model, spec: dict, groups=GROUPS) -> dict:
    sub = sub_request(spec, {"table": mtk(groups, k=None)})
    return values_by_node(
        run_batched(model, [sub])[0]["processingResponseDataByName"]["table"], "direction_write"
    )


def test_within_layer_index_matching_the_trace_changes_nothing(golden):
    traced = trace(node("mlp_neuron", [12, 7], 2), post=False, detach=True)
    plain = inference_spec(PROMPT, trace_config=traced)
    with_index = dict(plain, activationIndexForWithinLayerGrad=within("mlp.pre_act", [12, 7], 2))
    a, b = direction_values(golden, plain), direction_values(golden, with_index)
    assert a == b
    assert any(v != 0 for v in a.values())


def test_within_layer_index_moves_the_direction_of_a_loss_driven_pass(golden):
    loss = {"name": "logit_diff", "targetTokens": [" Mary"], "distractorTokens": [" John"]}
    plain = direction_values(golden, inference_spec(PROMPT, loss=loss))
    moved = direction_values(
        golden,
        dict(
            inference_spec(PROMPT, loss=loss),
            activationIndexForWithinLayerGrad=within("mlp.post_act", [12, "All"], 1),
        ),
    )
    # the direction is now the loss gradient at resid.post_attn of layer 1, so layer-2 nodes and
    # layer-1 MLP neurons no longer precede it, while layer-1 heads still do
    assert all(
        v == 0
        for (t, _, layer), v in moved.items()
        if layer == 2 or (layer == 1 and t == "mlp_neuron")
    )
    assert any(v != 0 for (t, _, layer), v in moved.items() if layer == 1 and t == "attention_head")
    assert moved != plain


def test_final_activation_residual_grad_follows_the_within_layer_index(golden):
    spec = dict(
        inference_spec(
            PROMPT, trace_config=trace(node("mlp_neuron", [12, 7], 2), post=False, detach=True)
        ),
        activationIndexForWithinLayerGrad=within("mlp.pre_act", [12, 7], 2),
    )
    real = direction_values(golden, spec)
    recomputed = direction_values(golden, spec, ACTIVATION_GROUPS)
    assert real.keys() == recomputed.keys()
    for key, value in real.items():
        assert_close(recomputed[key], value, msg=str(key))
