"""Decoding and differentiating only the active latents (worker.engine.autoencoders.sparse) gives
the dense formulas of engine.md §9.4 (``decode(z) = z W_decᵀ + b_pre``, ``∇z = ∇out W_dec``) at
every latent the AE DSTs read, and the golden AEs take that sparse path."""

from __future__ import annotations

import pytest
import torch

from tests.shared_dir import GOLDEN

engine = pytest.importorskip("worker.engine")
sparse = pytest.importorskip("worker.engine.autoencoders.sparse")

PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


def _latents(density: float, shape=(2, 7, 300)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.rand(shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < density, z, torch.zeros(()))


@pytest.mark.parametrize("density", [0.03, 0.6])  # the sparse path, then the dense one
def test_decode_and_gradient_of_the_active_latents_are_the_dense_formulas(density):
    z = _latents(density)
    assert sparse.is_sparse_enough(z) == (density < sparse.DENSE_ABOVE)
    w_dec = torch.randn(20, 300, generator=torch.Generator().manual_seed(2))  # [n, m]
    rows = w_dec.T.contiguous()
    decoded = sparse.decode_active(z, rows)
    assert torch.allclose(decoded, torch.einsum("btm,nm->btn", z, w_dec), rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(2, 7, 20, generator=torch.Generator().manual_seed(4))
    dense_grad = torch.einsum("btn,nm->btm", grad_out, w_dec)
    picked = sparse.grad_at_active(z, grad_out, rows)
    assert torch.allclose(picked, dense_grad * (z != 0), rtol=1e-5, atol=1e-5)
    assert torch.allclose(z * picked, z * dense_grad, rtol=1e-5, atol=1e-5)  # z·∇z, all of it


def test_through_latents_passes_the_value_and_gives_both_gradients():
    z = _latents(0.05)
    w_dec = torch.randn(20, 300, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 7, 20, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    latents = z.clone().requires_grad_(True)
    out = sparse.through_latents(x, latents, w_dec.T.contiguous())
    assert torch.equal(out, x.detach())
    grad_out = torch.randn(2, 7, 20, generator=torch.Generator().manual_seed(4))
    out.backward(grad_out)
    assert torch.equal(x.grad, grad_out)  # the full ∇out reaches x (§9.4)
    expected = torch.einsum("btn,nm->btm", grad_out, w_dec) * (z != 0)
    assert torch.allclose(latents.grad, expected, rtol=1e-5, atol=1e-5)


def test_the_golden_aes_take_the_sparse_path(golden_model_dir):
    """The golden cases check the sparse path against TDB: their AEs are sparse enough for it."""
    model = engine.load_model(
        str(golden_model_dir),
        "cpu",
        mlp_autoencoder=str(GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"),
    )
    ae = model.autoencoders.mlp
    for part in ae.layers.values():
        assert part.decoder_rows.is_contiguous()
    request = {
        "inferenceRequestSpec": {
            "prompt": PROMPT,
            "ablationSpecs": None,
            "lossFnConfig": None,
            "traceConfig": None,
            "activationIndexForWithinLayerGrad": None,
        },
        "derivedScalarsRequestSpec": {
            "dst": "online_mlp_autoencoder_latent",
            "layerIndex": 1,
            "activationIndex": 0,
            "normalizeActivationsUsingNeuronRecord": None,
            "passType": "forward",
            "numTopTokens": None,
        },
    }
    for layer in ae.layers:
        request["derivedScalarsRequestSpec"]["layerIndex"] = layer
        by_latent = [
            engine.run("derived_scalars", request, model)["derivedScalarsResponseData"][
                "activations"
            ]
            for request["derivedScalarsRequestSpec"]["activationIndex"] in range(0, 512, 37)
        ]
        z = torch.tensor(by_latent)
        assert 0 < int(torch.count_nonzero(z)) <= sparse.DENSE_ABOVE * z.numel()


OTHER_SECTION_3_9 = [
    "attn_write_to_latent",
    "flattened_attn_write_to_latent_summed_over_heads",
    "flattened_attn_write_to_latent_summed_over_heads_batched",
    "attn_write_to_latent_per_sequence_token",
    "attn_write_to_latent_per_sequence_token_batched",
]


@pytest.mark.parametrize("dst", OTHER_SECTION_3_9)
def test_the_section_3_9_dsts_tdb_crashes_on_are_unsupported_naming_dst(dst, golden_model_dir):
    """§9.8: with AEs loaded, the §3.9 latent DSTs other than the three TDB's routes serve crash
    in TDB whatever the request: a 422 ``unsupported`` naming ``dst``, never a guessed answer."""
    from models.errors import UnsupportedError

    model = engine.load_model(
        str(golden_model_dir),
        "cpu",
        attention_autoencoder=str(GOLDEN / "autoencoders" / "ae-resid-delta-attn-tiny"),
    )
    request = {
        "inferenceRequestSpec": {
            "prompt": PROMPT,
            "ablationSpecs": None,
            "lossFnConfig": None,
            "traceConfig": None,
            "activationIndexForWithinLayerGrad": {
                "activationLocationType": "online_autoencoder_latent",
                "tensorIndices": [3, 5],
                "layerIndex": 1,
                "passType": "forward",
            },
        },
        "derivedScalarsRequestSpec": {
            "dst": dst,
            "layerIndex": 1,
            "activationIndex": 0,
            "normalizeActivationsUsingNeuronRecord": None,
            "passType": "forward",
            "numTopTokens": None,
        },
    }
    with pytest.raises(UnsupportedError) as refused:
        engine.run("derived_scalars", request, model)
    assert refused.value.status == 422
    assert refused.value.path.endswith("dst")
