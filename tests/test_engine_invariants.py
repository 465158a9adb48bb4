"""Numerical invariants of the engine's answers (engine.md §10 items 4-18, 29, 30; protocol.md §8
items 7, 8, 11, 12), checked on real values computed by `worker.engine.run` on the golden model.

Full derived-scalar tensors are read back from multiple-top-k specs with `topAndBottomK: null`;
weights and biases for the right-hand sides come from the Hugging Face state dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models.wire.enums import DerivedScalarType
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
    node_key,
    read_columns,
    read_dsts,
    run_batched,
    saved,
    sub_request,
    tdb_spec,
    token_data,
    values_by_node,
)
from worker.engine import run
from worker.engine.derived import DSTS, flatten_pairs
from worker.engine.inference import ElementPlan, run_pass
from worker.engine.topk import DstTensors, intermediate_sum, rank_group, select_dst
from worker.engine.view import ElementView

golden, golden_hf, golden_ref = helpers.golden, helpers.golden_hf, helpers.golden_ref

PROMPT = "Paris is the capital of"
TARGETS = [" France", " Paris"]
DISTRACTORS = [" Germany"]
EXCLUDED_FILE = (
    Path(__file__).resolve().parents[1] / "models/data/least_common_gpt2_token_strings.json"
)


def _total(tensors: dict) -> float:
    return sum(float(t.sum()) for t in tensors.values())


# --- §10.4, §10.5: the TDB node table and the logits table --------------------------------------


@pytest.fixture(scope="module")
def tdb_plain(golden):
    prompt = "This is a test"
    request = {"subRequests": [tdb_spec(prompt, targets=[" test"], k=5)]}
    (answer,) = run("batched_tdb", request, golden)["inferenceSubResponses"]
    logits, hooks = hooked_forward(golden, encode(golden, prompt))
    return answer, logits, hooks


def test_top_output_logits_table_is_plain_top_and_bottom_k(golden, tdb_plain):
    answer, logits, _ = tdb_plain
    data = answer["processingResponseDataByName"]["topOutputTokenLogits"]
    last = logits[-1]
    top = torch.topk(last, 100)
    bottom = torch.topk(last, 100, largest=False)
    ids = top.indices.tolist() + bottom.indices.flip(0).tolist()
    values = top.values.tolist() + bottom.values.flip(0).tolist()
    assert [n["tensorIndices"] for n in data["nodeIndices"]] == [[-1, i] for i in ids]
    assert all(
        n["nodeType"] == "vocab_token" and n["layerIndex"] is None for n in data["nodeIndices"]
    )
    assert data["activationsByGroupId"]["logits"] == values
    assert data["vocabTokenStringsForIndices"] == [golden.tokenizer.decode_token(i) for i in ids]


def test_node_table_activation_of_mlp_nodes_is_hooked_post_act(tdb_plain):
    answer, _, hooks = tdb_plain
    data = answer["processingResponseDataByName"]["topKComponents"]
    activation = values_by_node(data, "activation")
    mlp = [(idx, layer, v) for (kind, idx, layer), v in activation.items() if kind == "mlp_neuron"]
    assert mlp
    for (t, i), layer, value in mlp:
        assert value == float(saved(hooks, "mlp.post_act", layer)[t, i])
    for (kind, idx, layer), value in activation.items():
        if kind == "attention_head":
            assert value == float(saved(hooks, "attn.qk_probs", layer)[idx])
        if kind == "layer":
            assert value == 1.0


def test_tdb_response_lists_are_parallel_and_finite(tdb_plain):
    """protocol.md §8 items 16 and 19 on a whole TDB answer."""
    answer, _, _ = tdb_plain
    json.dumps(answer, allow_nan=False)
    for name, data in answer["processingResponseDataByName"].items():
        n = len(data["nodeIndices"])
        for values in data.get("activationsByGroupId", {}).values():
            assert len(values) == n, name
        for key in ("topTokensList", "topTokensAttendedToList"):
            if key in data:
                assert len(data[key]) == n, name


# --- §10.6-§10.10: flattening and stores ---------------------------------------------------------


def test_flatten_example():
    x = torch.arange(1, 17).reshape(4, 4)
    assert flatten_pairs(x).tolist() == [1, 5, 6, 9, 10, 11, 13, 14, 15, 16]


def test_unflatten_of_flatten_is_identity_on_lower_triangles():
    t = 6
    x = torch.randn(t, t, 3, generator=torch.Generator().manual_seed(0))
    x = x * torch.ones(t, t).tril()[..., None]
    flat = flatten_pairs(x)
    rebuilt = torch.zeros_like(x)
    for p in range(flat.shape[0]):
        q = math.floor((math.sqrt(1 + 8 * p) - 1) / 2)
        rebuilt[q, p - q * (q + 1) // 2] = flat[p]
    assert torch.equal(rebuilt, x)


def test_every_dst_value_is_its_name_lowercased():
    assert all(dst.value == dst.name.lower() for dst in DerivedScalarType)


def _odd_even_store(layers=(5, 6)) -> DstTensors:
    odd = torch.arange(1, 48, 2, dtype=torch.float32).reshape(2, 3, 4)
    even = torch.arange(2, 49, 2, dtype=torch.float32).reshape(2, 3, 4)
    by_layer = {5: odd, 6: even}
    return DstTensors(
        "attn_qk_probs", "attention_head", {layer: by_layer[layer] for layer in layers}
    )


def test_store_ranking_across_layers():
    top = select_dst(_odd_even_store(), 2, True, None)
    assert top.values == [48, 47]
    assert top.nodes == [
        ("attention_head", (1, 2, 3), 6, "forward"),
        ("attention_head", (1, 2, 3), 5, "forward"),
    ]
    assert select_dst(_odd_even_store((5,)), 2, True, None).values == [47, 45]
    assert select_dst(_odd_even_store((6,)), 2, True, None).values == [48, 46]
    store = _odd_even_store()
    assert max(float(t.max()) for t in store.forward.values()) == top.values[0]
    assert float(intermediate_sum(store, [], False)) == 1176


def test_store_sums_are_additive_over_disjoint_layers():
    both = float(intermediate_sum(_odd_even_store(), [], False))
    parts = float(intermediate_sum(_odd_even_store((5,)), [], False)) + float(
        intermediate_sum(_odd_even_store((6,)), [], False)
    )
    assert both == parts == 576 + 600


def test_group_top_k_takes_k_per_dst_and_direction():
    small = DstTensors("mlp_post_act", "mlp_neuron", {0: torch.arange(5.0).reshape(5, 1)})
    large = _odd_even_store()
    nodes = rank_group([small, large], 7, None)
    assert len(nodes) == 2 * (min(7, 5) + min(7, 48))
    everything = rank_group([small, large], None, None)
    assert len(everything) == 2 * (5 + 48)
    assert len(set(everything)) == 5 + 48


def test_top_and_bottom_k_null_lists_every_element(golden):
    spec = inference_spec(PROMPT)
    groups = {"write_norm": ["mlp_write_norm", "unflattened_attn_write_norm"]}
    (answer,) = run_batched(golden, [sub_request(spec, {"all": mtk(groups, k=None)})])
    nodes = [node_key(n) for n in answer["processingResponseDataByName"]["all"]["nodeIndices"]]
    t, w = len(encode(golden, PROMPT)), golden.weights
    f, h = w.layers[0].w_in.shape[1], w.n_heads
    expected = {
        ("mlp_neuron", (i, j), layer)
        for layer in range(w.n_layers)
        for i in range(t)
        for j in range(f)
    }
    expected |= {
        ("attention_head", (q, k, hh), layer)
        for layer in range(w.n_layers)
        for q in range(t)
        for k in range(t)
        for hh in range(h)
    }
    assert len(nodes) == len(expected)
    assert set(nodes) == expected


def test_top_and_bottom_k_counts_through_run(golden):
    spec = inference_spec(PROMPT)
    groups = {"write_norm": ["mlp_write_norm", "unflattened_attn_write_norm"]}
    (answer,) = run_batched(golden, [sub_request(spec, {"some": mtk(groups, k=3)})])
    assert len(answer["processingResponseDataByName"]["some"]["nodeIndices"]) == 2 * (3 + 3)


# --- §10.11-§10.18: a loss-driven request (logit_diff, ln_f scale detached) ---------------------

GRADIENT_DSTS = [
    "resid_post_embedding_proj_to_final_residual_grad",
    "mlp_write_to_final_residual_grad",
    "unflattened_attn_write_to_final_residual_grad",
    "attn_write_to_final_residual_grad",
    "attn_write_to_final_residual_grad_per_sequence_token",
    "resid_post_mlp_proj_to_final_residual_grad",
    "resid_post_attn_proj_to_final_residual_grad",
    "mlp_layer_write_to_final_residual_grad",
    "attn_layer_write_to_final_residual_grad",
]
OTHER_DSTS = [
    "mlp_act_times_grad",
    "unflattened_attn_act_times_grad",
    "attn_act_times_grad",
    "attn_act_times_grad_per_sequence_token",
    "unflattened_attn_write_norm",
    "attn_write_norm",
    "attn_qk_probs",
    "flattened_attn_post_softmax",
    "mlp_write_norm",
    "resid_delta_mlp",
    "resid_delta_mlp_from_mlp_post_act",
    "always_one",
    "resid_post_embedding_norm",
]


def _loss_spec(ln_f_ablation: bool = True) -> dict:
    return inference_spec(
        PROMPT,
        loss=logit_diff(TARGETS, DISTRACTORS),
        ablations=[LN_F_ABLATION] if ln_f_ablation else None,
    )


@pytest.fixture(scope="module")
def loss_case(golden, golden_ref):
    """Full tensors, the loss, g = ∇xf and xf of one loss-driven request, and c."""
    spec = _loss_spec()
    dsts, tokens = read_dsts(golden, spec, GRADIENT_DSTS + OTHER_DSTS)
    n, d = golden.weights.n_layers, golden.weights.d_model
    ids = [golden.tokenizer.single_token_id(s) for s in TARGETS + DISTRACTORS]
    c = torch.zeros(golden.meta.vocab_size, dtype=torch.float64)
    for i in ids[: len(TARGETS)]:
        c[i] += 1 / len(TARGETS)
    for i in ids[len(TARGETS) :]:
        c[i] -= 1 / len(DISTRACTORS)
    w_u = golden_ref.W_U.double()
    return {
        "dsts": dsts,
        "loss": tokens["loss"],
        "ids": ids,
        "c": c,
        "g": read_columns(golden, spec, "resid_post_mlp", n - 1, d, "backward"),
        "xf": read_columns(golden, spec, "resid_post_mlp", n - 1, d),
        "rhs": tokens["loss"] - float(c @ (w_u.T @ golden_ref.w("ln_f.bias").double())),
        "T": len(tokens["tokensAsInts"]),
    }


def test_loss_is_mean_target_logit_minus_mean_distractor_logit(golden, loss_case):
    processing = {f"logit{i}": ds("logits", None, i) for i in loss_case["ids"]}
    (answer,) = run_batched(golden, [sub_request(_loss_spec(), processing)])
    data = answer["processingResponseDataByName"]
    last = [data[f"logit{i}"]["activations"][-1] for i in loss_case["ids"]]
    expected = sum(last[: len(TARGETS)]) / len(TARGETS) - sum(last[len(TARGETS) :]) / len(
        DISTRACTORS
    )
    assert token_data(answer)["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert loss_case["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("dst", GRADIENT_DSTS)
def test_final_residual_grad_dsts_are_zero_before_the_last_token(loss_case, dst):
    t = loss_case["T"]
    tensors = loss_case["dsts"][dst]
    pairs = torch.tril_indices(t, t)[0]  # query token of each flattened pair
    for layer, x in tensors.items():
        query = pairs if dst == "attn_write_to_final_residual_grad" else torch.arange(x.shape[0])
        assert bool((x[query != t - 1] == 0).all()), f"{dst} layer {layer}"


def test_final_residual_grad_dsts_are_not_all_zero_at_the_last_token(loss_case):
    for dst in [
        "resid_post_embedding_proj_to_final_residual_grad",
        "mlp_write_to_final_residual_grad",
        "unflattened_attn_write_to_final_residual_grad",
    ]:
        assert any(float(x[-1].abs().max()) > 1e-4 for x in loss_case["dsts"][dst].values()), dst


def _biases(ref, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ref.w(f"h.{layer}.attn.c_proj.bias").double(), ref.w(
        f"h.{layer}.mlp.c_proj.bias"
    ).double()


def test_direct_effects_and_biases_sum_to_the_loss_minus_the_final_bias_term(loss_case, golden_ref):
    """engine.md §10.13 (the sum rule)."""
    dsts, g = loss_case["dsts"], loss_case["g"][-1]
    n = golden_ref.n_layers
    total = (
        _total(dsts["resid_post_embedding_proj_to_final_residual_grad"])
        + _total(dsts["unflattened_attn_write_to_final_residual_grad"])
        + _total(dsts["mlp_write_to_final_residual_grad"])
        + sum(
            float(g @ (b_o + b_out))
            for b_o, b_out in (_biases(golden_ref, layer) for layer in range(n))
        )
    )
    assert total == pytest.approx(loss_case["rhs"], rel=1e-4, abs=1e-5)


def test_per_layer_writes_plus_bias_are_the_layer_write(loss_case, golden_ref):
    """engine.md §10.14."""
    dsts, g = loss_case["dsts"], loss_case["g"]
    for layer in range(golden_ref.n_layers):
        b_o, b_out = _biases(golden_ref, layer)
        mlp = dsts["mlp_write_to_final_residual_grad"][layer].sum(dim=1) + g @ b_out
        assert_close(
            mlp,
            dsts["mlp_layer_write_to_final_residual_grad"][layer][:, 0],
            msg=f"MLP layer {layer}",
        )
        attn = (
            dsts["unflattened_attn_write_to_final_residual_grad"][layer].sum(dim=(1, 2)) + g @ b_o
        )
        assert_close(
            attn,
            dsts["attn_layer_write_to_final_residual_grad"][layer][:, 0],
            msg=f"attn layer {layer}",
        )


def test_per_sequence_token_attention_dsts_sum_the_unflattened_ones(loss_case):
    """engine.md §10.15, first two statements."""
    dsts = loss_case["dsts"]
    for layer, x in dsts["unflattened_attn_write_to_final_residual_grad"].items():
        expected = dsts["attn_write_to_final_residual_grad_per_sequence_token"][layer]
        assert_close(x.sum(dim=1), expected, msg=f"write to grad, layer {layer}")
    for layer, x in dsts["unflattened_attn_act_times_grad"].items():
        expected = dsts["attn_act_times_grad_per_sequence_token"][layer]
        assert_close(x.sum(dim=1), expected, msg=f"act times grad, layer {layer}")


@pytest.mark.parametrize(
    ("flat", "unflat"),
    [
        ("attn_write_norm", "unflattened_attn_write_norm"),
        ("flattened_attn_post_softmax", "attn_qk_probs"),
        ("attn_act_times_grad", "unflattened_attn_act_times_grad"),
        ("attn_write_to_final_residual_grad", "unflattened_attn_write_to_final_residual_grad"),
    ],
)
def test_flattened_attention_dsts_flatten_the_unflattened_ones(loss_case, flat, unflat):
    dsts = loss_case["dsts"]
    for layer, x in dsts[unflat].items():
        assert_close(dsts[flat][layer], flatten_pairs(x), msg=f"{flat} layer {layer}")


@pytest.fixture(scope="module")
def forward_view(golden):
    """An ElementView over one plain pass (for write-vector DSTs too large to list through run)."""
    from worker.engine.hooks import HOOK_POINTS

    n = golden.weights.n_layers
    points = {
        (name, layer)
        for name, (_, layered) in HOOK_POINTS.items()
        for layer in (range(n) if layered else [None])
    }
    tokens = encode(golden, PROMPT)
    result = run_pass(golden.weights, [ElementPlan(tokens)], points, set(), False, golden.device)
    return ElementView(golden.weights, result.hooks, 0, len(tokens), None)


def test_mlp_write_norm_is_signed_norm_of_mlp_write(loss_case, forward_view, golden):
    for layer in range(golden.weights.n_layers):
        write = DSTS["mlp_write"].forward(forward_view, layer)  # [T, F, d]
        assert_close(
            loss_case["dsts"]["mlp_write_norm"][layer].abs(),
            write.norm(dim=-1),
            msg=f"layer {layer}",
        )


def test_attention_write_norm_and_head_sum_match_attn_write(loss_case, forward_view, golden):
    for layer in range(golden.weights.n_layers):
        write = DSTS["attn_write"].forward(forward_view, layer)  # [q, k, h, d]
        assert_close(
            loss_case["dsts"]["unflattened_attn_write_norm"][layer],
            write.norm(dim=-1),
            msg=f"norm, layer {layer}",
        )
        assert_close(
            DSTS["attn_write_sum_heads"].forward(forward_view, layer),
            write.sum(dim=2),
            msg=f"sum over heads, layer {layer}",
        )


def test_mlp_delta_from_post_act_plus_bias_is_mlp_delta(loss_case, golden_ref):
    dsts = loss_case["dsts"]
    for layer in range(golden_ref.n_layers):
        _, b_out = _biases(golden_ref, layer)
        assert_close(
            dsts["resid_delta_mlp_from_mlp_post_act"][layer] + b_out,
            dsts["resid_delta_mlp"][layer],
            msg=f"layer {layer}",
        )


def test_always_one_and_embedding_norm(loss_case, golden, golden_ref):
    dsts = loss_case["dsts"]
    assert bool((dsts["always_one"][None] == 1).all())
    tokens = encode(golden, PROMPT)
    x0 = golden_ref.w("wte.weight")[tokens] + golden_ref.w("wpe.weight")[: len(tokens)]
    assert_close(dsts["resid_post_embedding_norm"][None][:, 0], x0.norm(dim=-1))


@pytest.mark.parametrize(
    "dst",
    [
        "unflattened_attn_write_norm",
        "unflattened_attn_act_times_grad",
        "unflattened_attn_write_to_final_residual_grad",
        "attn_qk_probs",
    ],
)
def test_unflattened_attention_dsts_are_zero_above_the_diagonal(loss_case, dst):
    t = loss_case["T"]
    above = ~torch.ones(t, t, dtype=torch.bool).tril()
    for layer, x in loss_case["dsts"][dst].items():
        assert bool((x[above] == 0).all()), f"{dst} layer {layer}"


def test_final_residual_gradient_is_the_detached_layer_norm_formula(loss_case, golden_ref):
    """engine.md §5.4: ∂L/∂xf[T-1] = (1/sf) Pc(γf ⊙ (W_U c)) and rows before T-1 are 0."""
    xf = loss_case["xf"][-1]
    c = xf - xf.mean()
    sf = math.sqrt(float((c * c).mean()) + 1e-5)
    u = golden_ref.w("ln_f.weight").double() * (golden_ref.W_U.double() @ loss_case["c"])
    assert_close(loss_case["g"][-1], (u - u.mean()) / sf, msg="g[T-1]")
    assert bool((loss_case["g"][:-1] == 0).all())


def test_ln_f_ablation_makes_gradient_centred_and_linear(loss_case):
    """engine.md §10.18 with the appended ablation: Σ_r g = 0 and g·xf = L - c·(W_Uᵀ βf)."""
    g, xf = loss_case["g"][-1], loss_case["xf"][-1]
    assert float(g.sum()) == pytest.approx(0, abs=1e-5 * float(g.abs().sum()))
    assert float(g @ xf) == pytest.approx(loss_case["rhs"], rel=1e-4, abs=1e-5)
    layer_level = (
        loss_case["dsts"]["resid_post_attn_proj_to_final_residual_grad"][2][-1, 0]
        + loss_case["dsts"]["mlp_layer_write_to_final_residual_grad"][2][-1, 0]
    )
    assert float(layer_level) == pytest.approx(loss_case["rhs"], rel=1e-4, abs=1e-5)


def test_without_ln_f_ablation_gradient_is_orthogonal_to_final_residual(golden, loss_case):
    spec = _loss_spec(ln_f_ablation=False)
    n, d = golden.weights.n_layers, golden.weights.d_model
    g = read_columns(golden, spec, "resid_post_mlp", n - 1, d, "backward")[-1]
    xf = read_columns(golden, spec, "resid_post_mlp", n - 1, d)[-1]
    assert abs(float(g @ xf)) < 1e-4 * abs(loss_case["rhs"])
    assert float(g.abs().max()) > 1e-3


# --- §10.29, §10.30: token write and token read ---------------------------------------------------


@pytest.fixture(scope="module")
def excluded_strings(golden) -> set[str]:
    """The excluded token strings that no other token decodes to (so seeing one means an
    excluded id was listed; e.g. "�" is excluded but also the text of many partial-UTF-8 ids)."""
    excluded_ids = set(golden.excluded_ids)
    others = {
        golden.tokenizer.decode_token(i)
        for i in range(golden.meta.vocab_size)
        if i not in excluded_ids
    }
    strings = set(json.loads(EXCLUDED_FILE.read_text()))
    assert len(strings) == 596
    return strings - others


def test_upvoted_output_tokens_are_normalised_ordered_and_unexcluded(tdb_plain, excluded_strings):
    answer, _, _ = tdb_plain
    lists = answer["processingResponseDataByName"]["upvotedOutputTokens"]["topTokensList"]
    nonzero = 0
    for tt in lists:
        assert tt is not None
        top, bottom = tt["top"], tt["bottom"]
        assert [e["scalar"] for e in top] == sorted((e["scalar"] for e in top), reverse=True)
        assert [e["scalar"] for e in bottom] == sorted(e["scalar"] for e in bottom)
        assert not {e["token"] for e in top + bottom} & excluded_strings
        largest = max(abs(e["normalizedScalar"]) for e in top + bottom)
        if any(e["scalar"] != 0 for e in top + bottom):
            nonzero += 1
            assert largest == pytest.approx(1.0, abs=1e-6)
        else:
            assert largest == 0
    assert nonzero > 0


def _write_vector(ref, acts, key) -> torch.Tensor:
    kind, idx, layer = key
    if kind == "mlp_neuron":
        t, i = idx
        return acts[("mlp.post_act", layer)][t, i] * ref.w(f"h.{layer}.mlp.c_proj.weight")[i]
    if kind == "attention_head":
        q, k, h = idx
        d = ref.w("wte.weight").shape[1]
        e = d // ref.n_heads
        v = acts[("v", layer)][k, h]
        w_o = ref.w(f"h.{layer}.attn.c_proj.weight")[h * e : (h + 1) * e]
        return acts[("attn.qk_probs", layer)][q, k, h] * (v @ w_o)
    return acts[("resid.post_emb", None)][idx[0]]


def test_token_write_scores_are_centred_logit_lens_of_the_write(golden, golden_ref, tdb_plain):
    """engine.md §7.3 / §10.29: S = u - mean(u), u = (w ⊙ γf) W_U; the listed top tokens and
    scalars are the largest entries of S outside the exclusion set."""
    answer, _, _ = tdb_plain
    data = answer["processingResponseDataByName"]["upvotedOutputTokens"]
    tokens = encode(golden, "This is a test")
    with torch.no_grad():
        acts = golden_ref.forward(tokens, grad=False)
        for layer in range(
            golden_ref.n_layers
        ):  # value vectors, recomputed from the normalised input
            p = f"h.{layer}."
            x = (
                acts[("resid.post_emb", None)]
                if layer == 0
                else acts[("resid.post_mlp", layer - 1)]
            )
            a, _ = golden_ref._ln(x, p + "ln_1", False)
            d = x.shape[-1]
            qkv = a @ golden_ref.w(p + "attn.c_attn.weight") + golden_ref.w(p + "attn.c_attn.bias")
            acts[("v", layer)] = qkv[:, 2 * d :].reshape(len(tokens), golden_ref.n_heads, -1)
    excluded = torch.tensor(golden.excluded_ids)
    checked = 0
    for n, tt in zip(data["nodeIndices"], data["topTokensList"], strict=True):
        u = (
            _write_vector(golden_ref, acts, node_key(n)) * golden_ref.w("ln_f.weight")
        ) @ golden_ref.W_U
        s = (u - u.mean()).double()
        if float(s.abs().max()) < 1e-3:
            continue
        ranked = s.index_fill(0, excluded, -math.inf).topk(len(tt["top"]))
        assert [e["token"] for e in tt["top"]] == [
            golden.tokenizer.decode_token(int(i)) for i in ranked.indices
        ]
        assert_close(
            [e["scalar"] for e in tt["top"]], ranked.values, rtol=1e-4, atol=1e-4, msg=str(n)
        )
        checked += 1
    assert checked > 0


def test_token_read_ranking_is_the_same_at_two_tokens(golden):
    """engine.md §10.30. Two tokens of one neuron are forced into the node list by ablating its
    post-activation to large values (a forward ablation does not change its own read residual)."""
    layer, neuron, prompt = 1, 7, "The cat sat on the mat"
    ablations = [
        ablation("mlp.post_act", [1, neuron], layer, 1000.0),
        ablation("mlp.post_act", [3, neuron], layer, 999.0),
    ]
    processing = {
        "nodes": mtk({"activation": ["mlp_post_act"]}, k=2),
        "read": {
            "tokenScoringType": "input_tokens_that_upvote_mlp",
            "numTokens": 10,
            "dependsOnSpecName": "nodes",
        },
    }
    (answer,) = run_batched(
        golden, [sub_request(inference_spec(prompt, ablations=ablations), processing)]
    )
    data = answer["processingResponseDataByName"]["read"]
    by_node = {
        node_key(n): tt for n, tt in zip(data["nodeIndices"], data["topTokensList"], strict=True)
    }
    first, second = (
        by_node[("mlp_neuron", (1, neuron), layer)],
        by_node[("mlp_neuron", (3, neuron), layer)],
    )
    for side in ("top", "bottom"):
        assert [e["token"] for e in first[side]] == [e["token"] for e in second[side]]
        assert_close(
            [e["normalizedScalar"] for e in first[side]],
            [e["normalizedScalar"] for e in second[side]],
        )
    _, hooks = hooked_forward(golden, encode(golden, prompt))
    s2 = saved(hooks, "mlp_ln.scale", layer)[:, 0]
    ratio = [a["scalar"] / b["scalar"] for a, b in zip(first["top"], second["top"], strict=True)]
    assert_close(ratio, [float(s2[3] / s2[1])] * len(ratio))
