"""TDB's requests on every family (issue 12's done-when): the UI pair (clean and with a head
ablation), node tables with act_times_grad, neuron ablations and traces answer, and their
numbers agree with the same quantities computed through the Hugging Face model (its logits, its
autograd, its modules' weights)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import GOLDEN_DIR
from tests.family_models import build, load_hf
from tests.hf_capture import Capture
from worker.engine import load_model, run

FAMILIES = ["llama", "qwen2", "mistral", "neox-parallel", "neox-sequential"]
PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


def _case(name: str) -> dict:
    return json.loads((GOLDEN_DIR / "cases" / f"{name}.json").read_text())["request"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    base = tmp_path_factory.mktemp("families-tdb")
    cache = {}

    def get(name):
        if name not in cache:
            d = build(name, base / name, seed=7)
            cache[name] = (load_model(str(d), device="cpu"), load_hf(d), d)
        return cache[name]

    return get


def _hf_logit_diff(model, hf, edits=None) -> float:
    tokens = model.tokenizer.encode(PROMPT)
    target = model.tokenizer.single_token_id(" Germany")
    distractor = model.tokenizer.single_token_id(" France")
    capture = Capture(hf, model.meta.family, model.meta.vocab_size, edits)
    with torch.no_grad():
        logits = capture.run(torch.tensor([tokens]))[0, -1]
    return float(logits[target] - logits[distractor])


@pytest.mark.parametrize("name", FAMILIES)
def test_tdb_ui_pair_answers_with_hf_losses(name, loaded):
    model, hf, _ = loaded(name)
    request = _case("061-tdb-ui-pair-clean-and-ablated")
    head_layer, head = 0, 2
    ablation = request["subRequests"][1]["nodeAblations"][0]["nodeIndex"]
    ablation.update({"tensorIndices": [12, 0, head], "layerIndex": head_layer})
    response = run("batched_tdb", request, model)
    clean, ablated = response["inferenceSubResponses"]

    def zero_head(x):
        x = x.clone()
        x[0, 12, :, head] = 0.0
        return x

    loss = clean["inferenceResponse"]["inferenceAndTokenData"]["loss"]
    assert loss == pytest.approx(_hf_logit_diff(model, hf), rel=1e-4, abs=1e-5)
    ablated_loss = ablated["inferenceResponse"]["inferenceAndTokenData"]["loss"]
    expected = _hf_logit_diff(model, hf, {("attn.qk_probs", head_layer): zero_head})
    assert ablated_loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert ablated_loss != pytest.approx(loss, rel=1e-6)
    table = clean["processingResponseDataByName"]["topKComponents"]
    assert table["nodeIndices"] and "act_times_grad" in table["activationsByGroupId"]
    for spec in ("upvotedOutputTokens", "inputTokensThatUpvoteMlp", "inputTokensThatUpvoteAttnQ"):
        lists = clean["processingResponseDataByName"][spec]["topTokensList"]
        assert lists and all(len(t["top"]) == 10 for t in lists if t is not None)


def _trace_request(node: dict, post: bool, dst: str, layer: int, index: int) -> dict:
    return {
        "inferenceRequestSpec": {
            "prompt": PROMPT,
            "ablationSpecs": [
                {
                    "index": {
                        "activationLocationType": "mlp.post_act",
                        "tensorIndices": [2, 3],
                        "layerIndex": 0,
                        "passType": "forward",
                    },
                    "value": 0.0,
                }
            ],
            "lossFnConfig": None,
            "traceConfig": {
                "nodeIndex": {**node, "passType": "forward"},
                "preOrPostAct": "post" if post else "pre",
                "detachLayerNormScale": False,
                "attentionTraceType": "QK" if node["nodeType"] == "attention_head" else None,
                "downstreamTraceConfig": None,
            },
            "activationIndexForWithinLayerGrad": None,
        },
        "derivedScalarsRequestSpec": {
            "dst": dst,
            "layerIndex": layer,
            "activationIndex": index,
            "normalizeActivationsUsingNeuronRecord": None,
            "passType": "backward",
            "numTopTokens": None,
        },
    }


def _zero_neuron(x):
    x = x.clone()
    x[0, 2, 3] = 0.0
    return x


def _hf_trace(model, hf, scalar_of):
    tokens = model.tokenizer.encode(PROMPT)
    capture = Capture(
        hf, model.meta.family, model.meta.vocab_size, {("mlp.post_act", 0): _zero_neuron}
    )
    capture.run(torch.tensor([tokens]))
    scalar = scalar_of(capture)
    scalar.backward()
    return capture, float(scalar.detach())


@pytest.mark.parametrize("name", FAMILIES)
def test_mlp_neuron_trace_with_ablation_equals_hf_autograd(name, loaded):
    model, hf, _ = loaded(name)
    node = {"nodeType": "mlp_neuron", "tensorIndices": [9, 7], "layerIndex": 1}
    capture, value = _hf_trace(model, hf, lambda c: c.values[("mlp.post_act", 1)][0, 9, 7])
    out = run("derived_scalars", _trace_request(node, True, "mlp_post_act", 0, 11), model)
    data = out["inferenceAndTokenData"]
    assert data["activationValueForBackwardPass"] == pytest.approx(value, rel=1e-4, abs=1e-6)
    ours = torch.tensor(out["derivedScalarsResponseData"]["activations"])
    ref = capture.grad(("mlp.post_act", 0))[:, 11]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7)
    # the traced MLP's own layer: the attention gradient is 0 exactly in a parallel block
    out = run("derived_scalars", _trace_request(node, True, "resid_delta_attn", 1, 5), model)
    ours = torch.tensor(out["derivedScalarsResponseData"]["activations"])
    if model.weights.parallel:
        assert torch.count_nonzero(ours) == 0
    else:
        ref = capture.grad(("resid.delta_attn", 1))[:, 5]
        assert torch.count_nonzero(ref) > 0
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_trace_equals_hf_autograd(name, loaded):
    model, hf, _ = loaded(name)
    q, k, h = 9, 8, 3
    node = {"nodeType": "attention_head", "tensorIndices": [q, k, h], "layerIndex": 1}
    capture, value = _hf_trace(model, hf, lambda c: c.values[("attn.qk_probs_hf", 1)][0, h, q, k])
    out = run("derived_scalars", _trace_request(node, True, "mlp_post_act", 0, 4), model)
    data = out["inferenceAndTokenData"]
    assert data["activationValueForBackwardPass"] == pytest.approx(value, rel=1e-4, abs=1e-6)
    ours = torch.tensor(out["derivedScalarsResponseData"]["activations"])
    ref = capture.grad(("mlp.post_act", 0))[:, 4]
    assert torch.count_nonzero(ref) > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_gated_token_read_is_the_activation_gradient(name, loaded):
    """families.md §5.1: ρ = γ2 ⊙ (act'(pre) up W_in[:, i] + act(pre) W_up[:, i]) / s2(r),
    written out from the HF module's weights, for several (token, neuron) pairs read in one
    batched call."""
    model, hf, _ = loaded(name)
    from worker.engine.tokens import gated_reads

    tokens = model.tokenizer.encode(PROMPT)
    capture = Capture(hf, model.meta.family, model.meta.vocab_size)
    with torch.no_grad():
        capture.run(torch.tensor([tokens]))
    layer, pairs = 1, [(6, 13), (2, 13), (6, 5), (0, 30)]
    block = hf.model.layers[layer]
    eps = hf.config.rms_norm_eps
    gamma = block.post_attention_layernorm.weight
    rows, expected = [], []
    for t, i in pairs:
        r = capture.get(("resid.post_attn", layer))[t]
        s = torch.sqrt((r * r).mean() + eps)
        m = block.post_attention_layernorm(r[None])[0]
        w_gate, w_up = block.mlp.gate_proj.weight[i], block.mlp.up_proj.weight[i]
        pre, up = m @ w_gate, m @ w_up
        sig = torch.sigmoid(pre)
        act, act_grad = pre * sig, sig * (1 + pre * (1 - sig))
        expected.append(gamma * (act_grad * up * w_gate + act * w_up) / s)
        rows.append(r)
    neurons = torch.tensor([i for _, i in pairs])
    ours = gated_reads(model.weights, layer, torch.stack(rows), neurons)
    torch.testing.assert_close(ours, torch.stack(expected).detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["neox-parallel", "llama"])
def test_node_table_with_neuron_ablation_answers(name, loaded):
    """A top-k node table with act_times_grad and a neuron ablation (golden case 034's request)."""
    model, _, _ = loaded(name)
    request = copy.deepcopy(_case("034-mtk-act-times-grad-mlp-ablation"))
    request["inferenceRequestSpec"]["prompt"] = PROMPT
    request["inferenceRequestSpec"]["lossFnConfig"] = {
        "name": "logit_diff",
        "targetTokens": [" Germany"],
        "distractorTokens": [" France"],
    }
    response = run("multiple_top_k_derived_scalars", request, model)
    assert response["multipleTopKDerivedScalarsResponseData"]["nodeIndices"]
