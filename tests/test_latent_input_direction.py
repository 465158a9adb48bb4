"""``vocab_token_write_to_input_direction`` at an MLP AE latent: what TDB's node page for a latent
sends for its "input tokens that upvote this component" (seen in Chromium: it was a 422). The
score of a token is the latent's pre-activation when the MLP's input is the token's normalised
embedding, computed here from the model's and the AE's tensors, apart from the engine."""

from __future__ import annotations

import json

import pytest
import torch

from tests.shared_dir import GOLDEN

engine = pytest.importorskip("worker.engine")

AE = GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"


def lens_request(location: str, layer: int, index: int) -> dict:
    """The latent node page's request, as recorded (prompt "a", one backward ablation)."""
    ablation = {
        "index": {
            "activationLocationType": location,
            "tensorIndices": [0, index],
            "layerIndex": layer,
            "passType": "backward",
        },
        "value": 1,
    }
    return {
        "inferenceSubRequests": [
            {
                "inferenceRequestSpec": {
                    "prompt": "a",
                    "ablationSpecs": [ablation],
                    "lossFnConfig": {"name": "zero"},
                },
                "processingRequestSpecByName": {
                    "singleton": {
                        "dst": "vocab_token_write_to_input_direction",
                        "activationIndex": 0,
                        "numTopTokens": 100,
                    }
                },
            }
        ]
    }


@pytest.fixture(scope="module")
def model(golden_model_dir):
    return engine.load_model(str(golden_model_dir), "cpu", mlp_autoencoder=str(AE))


def test_a_latents_input_tokens_are_its_pre_activation_on_each_embedding(model):
    layer, latent = 1, 9
    answer = engine.run(
        "batched", lens_request("online_mlp_autoencoder_latent", layer, latent), model
    )
    top = answer["inferenceSubResponses"][0]["processingResponseDataByName"]["singleton"]
    top = top["topTokens"]["top"]
    w, part = model.weights, model.autoencoders.mlp.layers[layer]
    lw = w.layers[layer]
    normed = torch.nn.functional.layer_norm(w.W_E, (w.W_E.shape[1],), lw.ln2_g, lw.ln2_b, w.ln_eps)
    post = torch.nn.functional.gelu(normed @ lw.w_in + lw.b_in, approximate="tanh")
    expected = (post - part.pre_bias) @ part.w_enc[latent] + part.latent_bias[latent]
    values, ids = expected.topk(len(top))
    assert [t["scalar"] for t in top] == pytest.approx(values.tolist(), rel=1e-4, abs=1e-5)
    assert [t["token"] for t in top[:10]] == model.tokenizer.decode_tokens(ids[:10].tolist())
    # the single-AE spelling names the same latent
    single = engine.run("batched", lens_request("online_autoencoder_latent", layer, latent), model)
    assert json.dumps(single["inferenceSubResponses"][0]["processingResponseDataByName"]) == (
        json.dumps(answer["inferenceSubResponses"][0]["processingResponseDataByName"])
    )


def test_without_an_mlp_ae_it_is_a_422_naming_the_ablation(golden_model_dir):
    from models.errors import ActqError

    plain = engine.load_model(str(golden_model_dir), "cpu")
    with pytest.raises(ActqError) as raised:
        engine.run("batched", lens_request("online_mlp_autoencoder_latent", 1, 9), plain)
    assert raised.value.status == 422 and "autoencoder" in str(raised.value)
    assert raised.value.path.endswith("ablationSpecs.0.index.activationLocationType")
