"""Every family against Hugging Face's own modules (families.md §6): logits, every raw hook point
(forward hooks on the modules families.md §3 names), gradients (torch.autograd through the HF
model), ablations (the same edit made with an HF hook), and refusals for what a family lacks.

The models are tiny random ones built by tests/family_models.py from transformers' config
classes; each is loaded by actq from its directory and by AutoModelForCausalLM (eager)."""

from __future__ import annotations

import pytest
import torch

from models.errors import RequestValidationError
from tests.family_models import VARIANTS, build, load_hf
from tests.hf_capture import Capture
from worker.engine import load_model, run
from worker.engine.hooks import HOOK_POINTS, SEQUENCE_AXES
from worker.engine.inference import Ablation, ElementPlan, run_pass
from worker.engine.losses import LossSpec

PROMPT = "The capital of France is Paris, and the capital of Italy is"
NAMES = list(VARIANTS)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("families")
    return {name: build(name, base / name, seed=i) for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def loaded(family_dirs):
    cache = {}

    def get(name):
        if name not in cache:
            d = family_dirs[name]
            cache[name] = (load_model(str(d), device="cpu"), load_hf(d))
        return cache[name]

    return get


def _points(model) -> list:
    keys = []
    for name, (_, layered) in HOOK_POINTS.items():
        if name in model.weights.arch.absent_points or "autoencoder" in name:
            continue  # the AE points exist only where an AE is loaded
        keys += (
            [(name, layer) for layer in range(model.weights.n_layers)]
            if layered
            else [(name, None)]
        )
    return keys


def _close(ours: torch.Tensor, ref: torch.Tensor, what, rel=1e-5):
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    finite = torch.isfinite(ours)
    scale = ref[finite].abs().max().clamp(min=1e-6)
    err = (ours[finite] - ref[finite]).abs().max()
    assert err <= rel * scale + 1e-7, (what, float(err), float(scale))


def _engine_pass(model, tokens, ablations=(), loss=None, grads=False):
    """The pass's saved values and gradients, cut to the sequence (the pass runs wider:
    ``inference.compute_width``)."""
    keys = set(_points(model))
    plan = ElementPlan(tokens=tokens, ablations=list(ablations), loss=loss)
    hooks = run_pass(
        model.weights, [plan], keys, keys if grads else set(), grads, model.device
    ).hooks
    for store in (hooks.saved, hooks.grads):
        for (name, layer), value in store.items():
            for axis in SEQUENCE_AXES[name]:
                value = value.narrow(axis + 1, 0, min(len(tokens), value.shape[axis + 1]))
            store[(name, layer)] = value
    return hooks


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_every_hook_point_equal_hf(name, loaded):
    model, hf = loaded(name)
    tokens = model.tokenizer.encode(PROMPT)
    capture = Capture(hf, model.meta.family, model.meta.vocab_size)
    with torch.no_grad():
        capture.run(torch.tensor([tokens]))
    hooks = _engine_pass(model, tokens)
    for key in _points(model):
        ours = hooks.saved[key][0]
        ref = capture.get(key)
        _close(ours, ref, key, rel=1e-5 if key[0] == "logits" else 1e-4)
    for layer in range(model.weights.n_layers):
        # masked logits are -inf exactly where HF's mask hides the key (causal, sliding window)
        mask = capture.values[("attn.mask", layer)][0, 0]
        ours = hooks.saved[("attn.qk_logits", layer)][0]
        hidden = mask < -1e30
        assert torch.equal(torch.isinf(ours), hidden[..., None].expand_as(ours))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_hf_autograd(name, loaded):
    model, hf = loaded(name)
    tokens = model.tokenizer.encode(PROMPT)
    target, distractor = (
        model.tokenizer.encode_plain(" Rome")[0],
        model.tokenizer.encode_plain(" Paris")[0],
    )
    capture = Capture(hf, model.meta.family, model.meta.vocab_size)
    logits = capture.run(torch.tensor([tokens]))
    (logits[0, -1, target] - logits[0, -1, distractor]).backward()
    loss = LossSpec("logit_diff", (target,), (distractor,))
    hooks = _engine_pass(model, tokens, loss=loss, grads=True)
    skip = {"attn.qk_logits", "attn_ln.scale", "mlp_ln.scale", "resid.ln_f.scale"}
    heads, kv_heads = model.meta.n_heads, model.weights.arch.n_kv_heads
    scale = model.meta.d_head**-0.25
    for key in _points(model):
        if key[0] in skip:
            continue
        ours = hooks.grads[key][0]
        if key[0] in ("attn.q", "attn.k", "attn.v"):
            # the rep query-head copies of a K/V head add up to its gradient (families.md §3)
            t, _, e = ours.shape
            if key[0] != "attn.q":
                ours = ours.reshape(t, kv_heads, heads // kv_heads, e).sum(dim=2)
            ref = capture.kv_grad(key) * (1.0 if key[0] == "attn.v" else 1 / scale)
            _close(ours, ref, ("grad", key), rel=1e-4)
            continue
        _close(ours, capture.grad(key), ("grad", key), rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_neuron_and_head_ablations_equal_hf_edits(name, loaded):
    model, hf = loaded(name)
    tokens = model.tokenizer.encode(PROMPT)

    def zero_neuron(x):
        x = x.clone()
        x[0, 3, 5] = 0.0
        return x

    def zero_head(x):  # [B, q, k, h]
        x = x.clone()
        x[0, 6, :, 1] = 0.0
        return x

    edits = {("mlp.post_act", 0): zero_neuron, ("attn.qk_probs", 1): zero_head}
    capture = Capture(hf, model.meta.family, model.meta.vocab_size, edits)
    with torch.no_grad():
        ref = capture.run(torch.tensor([tokens]))[0]
    ablations = [
        Ablation("mlp.post_act", 0, (3, 5), False, 0.0),
        Ablation("attn.qk_probs", 1, (6, "All", 1), False, 0.0),
    ]
    hooks = _engine_pass(model, tokens, ablations)
    _close(hooks.saved[("logits", None)][0], ref, "ablated logits")
    clean = _engine_pass(model, tokens).saved[("logits", None)][0]
    assert (clean - ref).abs().max() > 1e-3  # the edit changed something


def test_parallel_delta_attn_ablation_reaches_only_the_residual(loaded):
    """families.md §4: ablating ΔA in a parallel block leaves that layer's MLP unchanged."""
    model, hf = loaded("neox-parallel")
    tokens = model.tokenizer.encode(PROMPT)

    def zero(x):
        return torch.zeros_like(x)

    capture = Capture(hf, "gpt_neox", model.meta.vocab_size, {("resid.delta_attn", 0): zero})
    with torch.no_grad():
        ref = capture.run(torch.tensor([tokens]))[0]
    hooks = _engine_pass(
        model, tokens, [Ablation("resid.delta_attn", 0, ("All", "All"), False, 0.0)]
    )
    _close(hooks.saved[("logits", None)][0], ref, "logits")
    _close(hooks.saved[("mlp.post_act", 0)][0], capture.get(("mlp.post_act", 0)), "mlp 0")


def _ds_request(dst="mlp_post_act", ablation_location=None, layer=0):
    spec = {
        "prompt": PROMPT,
        "ablationSpecs": [],
        "lossFnConfig": None,
        "traceConfig": None,
    }
    if ablation_location is not None:
        spec["ablationSpecs"] = [
            {
                "index": {
                    "activationLocationType": ablation_location,
                    "tensorIndices": [0, 0],
                    "layerIndex": layer,
                    "passType": "forward",
                },
                "value": 0.0,
            }
        ]
    return {
        "inferenceRequestSpec": spec,
        "derivedScalarsRequestSpec": {
            "dst": dst,
            "layerIndex": layer,
            "activationIndex": 0,
            "normalizeActivationsUsingNeuronRecord": None,
            "passType": "forward",
            "numTopTokens": None,
        },
    }


@pytest.mark.parametrize(
    "dst",
    ["resid_post_attn", "resid_post_attn_norm", "resid_post_attn_proj_to_final_residual_grad"],
)
def test_parallel_neox_refuses_absent_dsts(dst, loaded):
    model, _ = loaded("neox-parallel")
    with pytest.raises(RequestValidationError) as caught:
        run("derived_scalars", _ds_request(dst=dst), model)
    assert caught.value.status == 422
    assert caught.value.path == "derivedScalarsRequestSpec.dst"


def test_parallel_neox_refuses_resid_post_attn_ablation_and_sequential_serves_it(loaded):
    model, _ = loaded("neox-parallel")
    with pytest.raises(RequestValidationError) as caught:
        run("derived_scalars", _ds_request(ablation_location="resid.post_attn"), model)
    assert caught.value.path == "inferenceRequestSpec.ablationSpecs.0.index.activationLocationType"
    sequential, _ = loaded("neox-sequential")
    out = run(
        "derived_scalars",
        _ds_request(dst="resid_post_attn_norm", ablation_location="resid.post_attn"),
        sequential,
    )
    assert out["derivedScalarsResponseData"]["activations"]


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_heads_beyond_query_heads_are_refused(name, loaded):
    model, _ = loaded(name)
    request = _ds_request(ablation_location=None)
    request["inferenceRequestSpec"]["ablationSpecs"] = [
        {
            "index": {
                "activationLocationType": "attn.qk_probs",
                "tensorIndices": [0, 0, model.meta.n_heads],
                "layerIndex": 0,
                "passType": "forward",
            },
            "value": 0.0,
        }
    ]
    with pytest.raises(RequestValidationError) as caught:
        run("derived_scalars", request, model)
    assert caught.value.path == "inferenceRequestSpec.ablationSpecs.0.index.tensorIndices.2"
