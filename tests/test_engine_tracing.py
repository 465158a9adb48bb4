"""Backward passes from an internal node (engine.md §6, §10 items 2 and 19-26), on the golden
model. Expected gradients come from the tests' own reference pass over the Hugging Face weights
(`engine_helpers.Reference`), never from the engine's tracing module."""

from __future__ import annotations

import pytest
import torch

from tests import engine_helpers as helpers
from tests.engine_helpers import (
    LN_F_ABLATION,
    ablation,
    assert_close,
    encode,
    grad_or_zero,
    hooked_forward,
    inference_spec,
    logit_diff,
    node,
    node_to_trace,
    read_dsts,
    saved,
    tdb_spec,
    token_data,
    trace,
    values_by_node,
)
from worker.engine import run
from worker.engine.tracing import TracedNode, node_scalar

golden, golden_hf, golden_ref = helpers.golden, helpers.golden_hf, helpers.golden_ref

PROMPT = "When the sun goes down, the stars come out"
TARGETS, DISTRACTORS = [" tonight"], [" today"]
ACT_TIMES_GRAD = ["token_attribution", "mlp_act_times_grad", "unflattened_attn_act_times_grad"]
DIRECTION_WRITE = [
    "resid_post_embedding_proj_to_final_residual_grad",
    "mlp_write_to_final_residual_grad",
    "unflattened_attn_write_to_final_residual_grad",
]
MLP_NODE = ("mlp_neuron", (4, 17), 2)  # (t, i) at layer 2
K_NODE = ("attention_head", (5, 2, 1), 2)  # (q, k, h) at layer 2


@pytest.fixture(scope="module")
def tokens(golden) -> list[int]:
    return encode(golden, PROMPT)


@pytest.fixture(scope="module")
def plain(golden, tokens):
    return hooked_forward(golden, tokens)


def _preceding_residual(hooks, node_type: str, layer: int) -> torch.Tensor:
    if node_type == "mlp_neuron":
        return saved(hooks, "resid.post_attn", layer)
    return (
        saved(hooks, "resid.post_emb", None)
        if layer == 0
        else saved(hooks, "resid.post_mlp", layer - 1)
    )


# --- §10.2 reconstitution -----------------------------------------------------------------------


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("post", [False, True])
def test_reconstituted_mlp_node_equals_hooked_value(golden, plain, post, detach):
    _, hooks = plain
    point = "mlp.post_act" if post else "mlp.pre_act"
    for layer in range(golden.weights.n_layers):
        resid = _preceding_residual(hooks, "mlp_neuron", layer)
        hooked = saved(hooks, point, layer)
        for t in range(resid.shape[0]):
            for i in range(0, hooked.shape[1], 16):
                traced = TracedNode("mlp_neuron", layer, (t, i), post, detach, None)
                assert torch.allclose(node_scalar(golden.weights, traced, resid), hooked[t, i]), (
                    layer,
                    t,
                    i,
                )


@pytest.mark.parametrize("trace_type", ["QK", "Q", "K"])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("post", [False, True])
def test_reconstituted_attention_node_equals_hooked_value(golden, plain, post, detach, trace_type):
    """Attention logits are dot products of vectors whose terms are about 1 in size, so a logit near
    0 carries absolute rounding of ~1e-6: compared with atol 1e-5 instead of allclose's 1e-8."""
    _, hooks = plain
    point = "attn.qk_probs" if post else "attn.qk_logits"
    for layer in range(golden.weights.n_layers):
        resid = _preceding_residual(hooks, "attention_head", layer)
        hooked = saved(hooks, point, layer)
        t, _, heads = hooked.shape
        for q in range(t):
            for k in range(q + 1):
                for h in range(heads):
                    traced = TracedNode(
                        "attention_head", layer, (q, k, h), post, detach, trace_type
                    )
                    value = node_scalar(golden.weights, traced, resid)
                    assert_close(
                        value, hooked[q, k, h], rtol=1e-5, atol=1e-5, msg=str((layer, q, k, h))
                    )


# --- manual gradients ---------------------------------------------------------------------------


def _manual_trace(
    ref, tokens, key, post: bool, detach: bool, trace_type: str | None = None
) -> dict:
    """Reference forward + backward from one node's own hooked value, with the node's layer-norm
    scale detached if asked and, for Q/K traces, the other side (and V) stopped."""
    kind, idx, layer = key
    if kind == "mlp_neuron":
        acts = ref.forward(tokens, detach=frozenset({("ln_2", layer)}) if detach else frozenset())
        point = "mlp.post_act" if post else "mlp.pre_act"
    else:
        stop = {"K": {"q", "v"}, "Q": {"k", "v"}, "QK": {"v"}}[trace_type]
        acts = ref.forward(
            tokens,
            detach=frozenset({("ln_1", layer)}) if detach else frozenset(),
            stop={layer: stop},
        )
        point = "attn.qk_probs" if post else "attn.qk_logits"
    scalar = acts[(point, layer)][idx]
    scalar.backward()
    acts["scalar"] = float(scalar.detach())
    return acts


def _act_times_grad(acts, key) -> float:
    kind, idx, layer = key
    if kind == "mlp_neuron":
        x = acts[("mlp.post_act", layer)]
    elif kind == "attention_head":
        x = acts[("attn.qk_probs", layer)]
    else:
        x0 = acts[("resid.post_emb", None)].detach()
        return float(x0[idx[0]] @ grad_or_zero(acts[("resid.post_emb", None)])[idx[0]])
    return float(x.detach()[idx] * grad_or_zero(x)[idx])


def _manual_full(acts, dst: str, n_layers: int) -> dict:
    if dst == "token_attribution":
        x0 = acts[("resid.post_emb", None)]
        return {None: (x0.detach() * grad_or_zero(x0)).sum(-1, keepdim=True)}
    point = "mlp.post_act" if dst == "mlp_act_times_grad" else "attn.qk_probs"
    return {
        layer: (acts[(point, layer)] * grad_or_zero(acts[(point, layer)])).detach()
        for layer in range(n_layers)
    }


def _tdb_trace(model, upstream: dict, downstream=None, targets=(), distractors=()) -> dict:
    request = {
        "subRequests": [
            tdb_spec(PROMPT, targets, distractors, k=10, upstream=upstream, downstream=downstream)
        ]
    }
    (answer,) = run("batched_tdb", request, model)["inferenceSubResponses"]
    return answer


# --- §10.19, §10.23: TDB traces against manual autograd -----------------------------------------


@pytest.mark.parametrize(("key", "trace_type"), [(MLP_NODE, None), (K_NODE, "K")])
def test_tdb_trace_act_times_grad_matches_manual_gradient(
    golden, golden_ref, tokens, key, trace_type
):
    kind, idx, layer = key
    answer = _tdb_trace(golden, node_to_trace(node(kind, list(idx), layer), trace_type))
    acts = _manual_trace(golden_ref, tokens, key, post=False, detach=True, trace_type=trace_type)
    values = values_by_node(
        answer["processingResponseDataByName"]["topKComponents"], "act_times_grad"
    )
    expected = [_act_times_grad(acts, k) for k in values]
    assert_close(list(values.values()), expected, msg=f"trace from {key}")
    assert any(abs(v) > 1e-3 for v in expected)
    assert token_data(answer)["loss"] is None


@pytest.mark.parametrize(("key", "trace_type"), [(MLP_NODE, None), (K_NODE, "K")])
def test_trace_act_times_grad_tensors_match_manual_gradient(
    golden, golden_ref, tokens, key, trace_type
):
    kind, idx, layer = key
    config = trace(node(kind, list(idx), layer), post=False, detach=True, trace_type=trace_type)
    dsts, _ = read_dsts(golden, inference_spec(PROMPT, trace_config=config), ACT_TIMES_GRAD)
    acts = _manual_trace(golden_ref, tokens, key, post=False, detach=True, trace_type=trace_type)
    for dst in ACT_TIMES_GRAD:
        expected = _manual_full(acts, dst, golden_ref.n_layers)
        for lay, tensor in dsts[dst].items():
            assert_close(tensor, expected[lay], msg=f"{dst} layer {lay}")


@pytest.mark.parametrize(("key", "trace_type"), [(MLP_NODE, None), (K_NODE, "K")])
def test_tdb_trace_value_is_the_hooked_pre_activation(golden, plain, key, trace_type):
    kind, idx, layer = key
    answer = _tdb_trace(golden, node_to_trace(node(kind, list(idx), layer), trace_type))
    _, hooks = plain
    point = "mlp.pre_act" if kind == "mlp_neuron" else "attn.qk_logits"
    expected = float(saved(hooks, point, layer)[idx])
    assert token_data(answer)["activationValueForBackwardPass"] == pytest.approx(
        expected, rel=1e-4, abs=1e-5
    )


@pytest.mark.parametrize(
    ("key", "trace_type", "point"),
    [
        (MLP_NODE, None, "mlp.post_act"),
        (K_NODE, "QK", "attn.qk_probs"),
        (K_NODE, "Q", "attn.qk_probs"),
    ],
)
def test_post_trace_value_is_the_hooked_post_activation(golden, plain, key, trace_type, point):
    kind, idx, layer = key
    config = trace(node(kind, list(idx), layer), post=True, detach=False, trace_type=trace_type)
    _, data = read_dsts(golden, inference_spec(PROMPT, trace_config=config), ["mlp_act_times_grad"])
    _, hooks = plain
    expected = float(saved(hooks, point, layer)[idx])
    assert data["activationValueForBackwardPass"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


# --- §10.24: V trace without a downstream node ----------------------------------------------------


def test_value_trace_equals_untraced_direct_effect_of_the_head(golden, tokens, plain):
    layer, h = 1, 0
    q = len(tokens) - 1
    k = int(saved(plain[1], "attn.qk_probs", layer)[q, :q, h].argmax())  # a key it attends to
    upstream = node_to_trace(node("attention_head", [q, k, h], layer), "V")
    answer = _tdb_trace(golden, upstream, targets=TARGETS, distractors=DISTRACTORS)
    traced = token_data(answer)["activationValueForBackwardPass"]
    spec = inference_spec(PROMPT, loss=logit_diff(TARGETS, DISTRACTORS), ablations=[LN_F_ABLATION])
    dsts, untraced = read_dsts(golden, spec, ["unflattened_attn_write_to_final_residual_grad"])
    expected = float(dsts["unflattened_attn_write_to_final_residual_grad"][layer][q, k, h])
    assert abs(expected) > 1e-3
    assert traced == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert token_data(answer)["loss"] == pytest.approx(untraced["loss"], rel=1e-6)


# --- §10.20: final activation residual gradient ----------------------------------------------------


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(
    ("node_index", "trace_type"),
    [
        (node("mlp_neuron", [4, 17], 2), None),
        (node("attention_head", [5, 2, 1], 2), "QK"),
        (node("attention_head", [1, 1, 0], 1), "QK"),
    ],
)
def test_final_activation_residual_grad_equals_final_residual_grad(
    golden, node_index, trace_type, detach
):
    config = trace(node_index, post=True, detach=detach, trace_type=trace_type)
    pairs = [
        (d, d.replace("final_residual_grad", "final_activation_residual_grad"))
        for d in DIRECTION_WRITE
    ]
    dsts, _ = read_dsts(
        golden, inference_spec(PROMPT, trace_config=config), [x for p in pairs for x in p]
    )
    for real, recomputed in pairs:
        for layer, tensor in dsts[real].items():
            assert_close(dsts[recomputed][layer], tensor, msg=f"{recomputed} layer {layer}")
    assert any(float(t.abs().max()) > 1e-4 for d, _ in pairs for t in dsts[d].values())


# --- §10.21, §10.22: traces from layer 0 -----------------------------------------------------------


def _layer0_trace(golden, node_index: dict, trace_type: str | None) -> dict:
    config = trace(node_index, post=True, detach=False, trace_type=trace_type)
    dsts, _ = read_dsts(
        golden, inference_spec(PROMPT, trace_config=config), ACT_TIMES_GRAD + DIRECTION_WRITE
    )
    return dsts


def test_attention_trace_at_layer_zero_reaches_only_the_embeddings(golden):
    dsts = _layer0_trace(golden, node("attention_head", [3, 1, 2], 0), "QK")
    for dst in [
        "mlp_act_times_grad",
        "unflattened_attn_act_times_grad",
        "mlp_write_to_final_residual_grad",
        "unflattened_attn_write_to_final_residual_grad",
    ]:
        for layer, tensor in dsts[dst].items():
            assert bool((tensor == 0).all()), f"{dst} layer {layer}"
    for dst in ["token_attribution", "resid_post_embedding_proj_to_final_residual_grad"]:
        assert float(dsts[dst][None].abs().max()) > 0, dst


def test_attention_trace_at_layer_zero_token_attribution_is_embedding_projection(golden):
    dsts = _layer0_trace(golden, node("attention_head", [3, 1, 2], 0), "QK")
    assert_close(
        dsts["token_attribution"][None],
        dsts["resid_post_embedding_proj_to_final_residual_grad"][None],
    )


def test_mlp_trace_at_layer_zero_reaches_layer_zero_attention(golden):
    dsts = _layer0_trace(golden, node("mlp_neuron", [3, 17], 0), None)
    assert float(dsts["unflattened_attn_act_times_grad"][0].abs().max()) > 0
    assert float(dsts["unflattened_attn_write_to_final_residual_grad"][0].abs().max()) > 0


# --- §10.25: nothing downstream of the traced node gets a gradient -------------------------------

GRADIENT_DSTS = [
    "mlp_act_times_grad",
    "mlp_write_to_final_residual_grad",
    "unflattened_attn_act_times_grad",
    "unflattened_attn_write_to_final_residual_grad",
]


@pytest.mark.parametrize(
    ("node_index", "trace_type"),
    [(node("mlp_neuron", [4, 17], 1), None), (node("attention_head", [5, 2, 1], 1), "K")],
)
def test_gradient_dsts_vanish_from_the_traced_layer_on(golden, node_index, trace_type):
    layer = node_index["layerIndex"]
    config = trace(node_index, post=False, detach=True, trace_type=trace_type)
    dsts, _ = read_dsts(golden, inference_spec(PROMPT, trace_config=config), GRADIENT_DSTS)
    for dst in GRADIENT_DSTS:
        mlp_trace_attention = node_index["nodeType"] == "mlp_neuron" and "attn" in dst
        first_zero = layer + 1 if mlp_trace_attention else layer
        for lay, tensor in dsts[dst].items():
            if lay >= first_zero:
                assert bool((tensor == 0).all()), f"{dst} layer {lay}"
            else:
                assert float(tensor.abs().max()) > 0, f"{dst} layer {lay} is all zero"


# --- §10.26: a backward ablation of 1 under a zero loss is a post trace -----------------------------


def test_zero_loss_with_unit_backward_ablation_equals_post_trace(golden):
    t, i, layer = 4, 17, 2
    ablated = inference_spec(
        PROMPT,
        loss={"name": "zero", "targetTokens": None, "distractorTokens": None},
        ablations=[ablation("mlp.post_act", [t, i], layer, 1.0, backward=True)],
    )
    traced = inference_spec(
        PROMPT, trace_config=trace(node("mlp_neuron", [t, i], layer), post=True, detach=False)
    )
    by_ablation, _ = read_dsts(golden, ablated, ACT_TIMES_GRAD)
    by_trace, _ = read_dsts(golden, traced, ACT_TIMES_GRAD)
    for dst in ACT_TIMES_GRAD:
        for lay, tensor in by_trace[dst].items():
            assert_close(by_ablation[dst][lay], tensor, msg=f"{dst} layer {lay}")
    assert float(by_trace["mlp_act_times_grad"][0].abs().max()) > 1e-3
