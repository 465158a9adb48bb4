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


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_an_ablated_layers_sparse_graph_gives_the_dense_graphs_values_and_gradients(activation):
    """TDB's whole graph with an ablated latent, ``decode(hook(z)) + x − decode(z)``: computed over
    the active latents (sparse decodes, the encoder's sparse backward), the output, the gradient
    reaching x and the latents' gradient where they or z are nonzero are the dense graph's."""
    from worker.engine.autoencoders import AutoencoderLayer
    from worker.engine.hooks import overwrite

    g = torch.Generator().manual_seed(6)
    n, m = 24, 400
    part = AutoencoderLayer(
        torch.randn(n, generator=g) * 0.1,
        torch.randn(m, n, generator=g) / n**0.5,
        torch.full((m,), -1.6),  # a few % of latents active
        torch.randn(n, m, generator=g),
        activation,
        k=8,
        threshold=torch.full((m,), 0.05),
    )
    x0 = torch.randn(2, 5, n, generator=g)
    grad_out = torch.randn(2, 5, n, generator=g)
    rows = part.decoder_rows

    def graph(sparse_products: bool):
        x = x0.clone().requires_grad_(True)
        z = sparse.encode_differentiable(part, x) if sparse_products else part.encode(x)
        active = torch.nonzero(z[0, 2] > 0).flatten()
        latents = overwrite(z, (0, 2, int(active[0])), 0.0)  # an active latent ablated
        latents = overwrite(latents, (1, 3, int(torch.nonzero(z[1, 3] == 0)[0])), 0.7)
        latents.retain_grad()
        if sparse_products:
            needed = (latents != 0) | (z != 0)
            out = sparse.decode_differentiable(latents, rows, needed) + part.pre_bias
            out = out + (x - (sparse.decode_differentiable(z, rows) + part.pre_bias))
        else:
            out = part.decode(latents) + (x - part.decode(z))
        out.backward(grad_out)
        return out.detach(), x.grad, latents.grad, ((latents != 0) | (z != 0)).detach()

    assert sparse.is_sparse_enough(part.encode(x0))
    out, x_grad, latent_grad, needed = graph(True)
    dense_out, dense_x_grad, dense_latent_grad, _ = graph(False)
    assert torch.allclose(out, dense_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x_grad, dense_x_grad, rtol=1e-4, atol=1e-5)
    assert not torch.equal(x_grad, grad_out)  # the ablation's gradient did reach the encoder
    assert torch.allclose(latent_grad * needed, dense_latent_grad * needed, rtol=1e-4, atol=1e-5)


def test_equal_sequences_of_a_pass_share_one_encoder_product_bit_for_bit():
    """The encoder runs once per distinct sequence (autoencoders.injection.encode_sequences): the
    copies are the bits the whole batch's product gives, and unequal sequences are never merged."""
    injection = pytest.importorskip("worker.engine.autoencoders.injection")
    model_layer = pytest.importorskip("worker.engine.autoencoders.model")
    g = torch.Generator().manual_seed(6)
    n, m = 3072, 2048
    part = model_layer.AutoencoderLayer(
        torch.randn(n, generator=g) * 0.1,
        torch.randn(m, n, generator=g) / n**0.5,
        torch.randn(m, generator=g) - 1.5,
        torch.randn(n, m, generator=g),
    )
    a, b = torch.randn(2, 60, n, generator=g)
    nearly = a.clone()
    nearly[59, 7] = torch.nextafter(nearly[59, 7], torch.tensor(1e9))  # one ulp apart
    x = torch.stack([a, b, a, nearly, b])
    assert injection.equal_sequences(x) == [0, 1, 0, 3, 1]
    with torch.no_grad():
        shared = injection.encode_sequences(part, x)
        whole = part.encode(x)
    assert torch.equal(shared, whole)
    assert shared.data_ptr() != x.data_ptr() and shared[0].data_ptr() != shared[2].data_ptr()
    distinct = torch.stack([a, b])
    assert injection.equal_sequences(distinct) == [0, 1]
