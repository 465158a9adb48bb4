"""The loss functions of engine.md §4 other than logit_diff, and the vocabulary input direction of
§3.7, checked against Hugging Face's GPT-2 with plain autograd (no ln_f detachment: these are
`batched` requests, which carry no ablation unless they ask for one)."""

from __future__ import annotations

import pytest
import torch

from tests import engine_helpers as helpers
from tests.engine_helpers import assert_close, run_batched
from worker.engine import run

golden, golden_hf = helpers.golden, helpers.golden_hf  # module-scoped fixtures

PROMPT = "When Mary and John went to the store, John gave a drink to"
LAYER, NEURON = 1, 42


def hf_post_and_grad(hf, tokens: list[int], loss_of) -> tuple[torch.Tensor, torch.Tensor, float]:
    """mlp.post_act of LAYER and its gradient for the loss `loss_of(logits at the last token)`."""
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["post"] = output

    handle = hf.transformer.h[LAYER].mlp.act.register_forward_hook(keep)
    try:
        logits = hf(torch.tensor([tokens])).logits[0]
        loss = loss_of(logits[-1])
        loss.backward()
    finally:
        handle.remove()
        hf.zero_grad(set_to_none=True)
    post = captured["post"]
    return post[0].detach(), post.grad[0], float(loss.detach())


PROBABLE: list[str] = []  # the test fills in the model's own likeliest tokens


def likeliest_tokens(model, hf, n: int = 2) -> list[str]:
    with torch.no_grad():
        logits = hf(torch.tensor([model.tokenizer.encode(PROMPT)])).logits[0, -1]
    strings = [model.tokenizer.decode_token(i) for i in logits.topk(20).indices.tolist()]
    return [s for s in strings if len(model.tokenizer.encode(s)) == 1][:n]


LOSSES = {
    "logit_minus_mean": (
        {"name": "logit_minus_mean", "targetTokens": [" Mary", " Mary", " John"]},
        lambda ids: lambda last: last[ids].mean() - last.mean(),
    ),
    "probs": (  # the two likeliest next tokens of PROMPT on the golden model: large gradients
        {"name": "probs", "targetTokens": PROBABLE},
        lambda ids: lambda last: torch.softmax(last, dim=-1)[ids].sum(),
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_value_and_act_times_grad_match_hf_autograd(golden, golden_hf, name):
    config, make_loss = LOSSES[name]
    if name == "probs":
        config = dict(config, targetTokens=likeliest_tokens(golden, golden_hf))
    ids = [golden.tokenizer.single_token_id(s) for s in config["targetTokens"]]
    post, grad, loss = hf_post_and_grad(golden_hf, golden.tokenizer.encode(PROMPT), make_loss(ids))
    neuron = int((post * grad).abs().sum(dim=0).argmax())  # the neuron the loss leans on most
    spec = {"prompt": PROMPT, "lossFnConfig": config}
    table = {"dst": "mlp_act_times_grad", "layerIndex": LAYER, "activationIndex": neuron}
    sub = {"inferenceRequestSpec": spec, "processingRequestSpecByName": {"x": table}}
    answer = run_batched(golden, [sub])[0]
    data = answer["inferenceResponse"]["inferenceAndTokenData"]
    assert_close(data["loss"], loss)
    values = answer["processingResponseDataByName"]["x"]["activations"]
    expected = (post[:, neuron] * grad[:, neuron]).tolist()
    assert max(abs(v) for v in expected) > 1e-3
    for got, want in zip(values, expected, strict=True):
        assert_close(got, want, atol=1e-6)


def test_repeated_targets_count_repeatedly(golden):
    def loss(targets):
        spec = {"prompt": PROMPT, "lossFnConfig": {"name": "probs", "targetTokens": targets}}
        sub = {"inferenceRequestSpec": spec, "processingRequestSpecByName": {}}
        return run_batched(golden, [sub])[0]["inferenceResponse"]["inferenceAndTokenData"]["loss"]

    assert_close(loss([" Mary", " Mary"]), 2 * loss([" Mary"]))


def test_vocab_token_write_to_input_direction_is_the_neuron_preactivation_of_each_embedding(
    golden, golden_hf
):
    ablation = {
        "index": {
            "activationLocationType": "mlp.post_act",
            "tensorIndices": ["All", NEURON],
            "layerIndex": LAYER,
            "passType": "forward",
        },
        "value": 0.0,
    }
    request = {
        "inferenceRequestSpec": {"prompt": "Hello there", "ablationSpecs": [ablation]},
        "derivedScalarsRequestSpec": {
            "dst": "vocab_token_write_to_input_direction",
            "layerIndex": None,
            "activationIndex": 464,
            "numTopTokens": 5,
        },
    }
    answer = run("derived_scalars", request, golden)["derivedScalarsResponseData"]
    block = golden_hf.transformer.h[LAYER]
    with torch.no_grad():
        normed = block.ln_2(golden_hf.transformer.wte.weight)
        direction = normed @ block.mlp.c_fc.weight[:, NEURON] + block.mlp.c_fc.bias[NEURON]
    assert len(answer["activations"]) == 2  # one per prompt token, the same value
    for value in answer["activations"]:
        assert_close(value, float(direction[464]))
    top = answer["topTokens"]["top"]
    excluded = set(golden.excluded_ids)
    allowed = torch.tensor([i not in excluded for i in range(direction.numel())])
    best = torch.where(allowed, direction, torch.tensor(float("-inf"))).topk(5)
    assert [t["token"] for t in top] == [
        golden.tokenizer.decode_token(i) for i in best.indices.tolist()
    ]
    for entry, value in zip(top, best.values.tolist(), strict=True):
        assert_close(entry["scalar"], value)
