"""Token reads of latents (engine.md §9.5) in one backward per block of rows
(worker.engine.autoencoders.tracing.latent_read_directions): each row's read is the gradient of
its own latent's pre-activation, and its bits do not depend on the rows it is read with."""

from __future__ import annotations

import pytest
import torch

from tests.shared_dir import GOLDEN

engine = pytest.importorskip("worker.engine")
tracing = pytest.importorskip("worker.engine.autoencoders.tracing")

PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


@pytest.fixture(scope="module")
def mlp_ae_model(golden_model_dir):
    return engine.load_model(
        str(golden_model_dir),
        "cpu",
        mlp_autoencoder=str(GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"),
    )


def _one_read(weights, ae, layer, row, j):
    """The read written out for one row: autograd of encode_pre_act(input(r))[j] at r."""
    part = ae.layers[layer]
    with torch.enable_grad():
        r = row.detach().clone().requires_grad_(True)
        x = tracing.ae_input(weights, ae, layer, r[None], True)[0]
        pre = part.encode_pre_act(x)[j]
        (grad,) = torch.autograd.grad(pre, r)
    return grad


def test_latent_reads_are_each_rows_own_gradient_and_keep_their_bits(mlp_ae_model):
    model = mlp_ae_model
    ae = model.autoencoders.mlp
    layer = sorted(ae.layers)[-1]
    g = torch.Generator().manual_seed(7)
    d = model.weights.W_E.shape[1]
    rows = torch.randn(70, d, generator=g)  # more than one block
    latents = torch.randint(0, ae.layers[layer].w_enc.shape[0], (70,), generator=g)
    reads = tracing.latent_read_directions(model.weights, ae, layer, rows, latents)
    assert reads.shape == rows.shape
    for i in range(0, 70, 7):
        expected = _one_read(model.weights, ae, layer, rows[i], int(latents[i]))
        torch.testing.assert_close(reads[i], expected, rtol=1e-5, atol=1e-7)
    for picked in ([3], [3, 60, 1], list(range(20)), [69, 3] + list(range(30, 50))):
        index = torch.tensor(picked)
        alone = tracing.latent_read_directions(
            model.weights, ae, layer, rows[index], latents[index]
        )
        assert torch.equal(alone, reads[index]), picked


@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (1024, 4096), (4096, 1024)])
def test_read_blocks_are_shapes_that_keep_a_rows_bits(shape):
    """At gpt2-sized widths, a row's product in a block of 16 to 64 rows (a multiple of 4) has
    the bits it has in any other such block: the forward and backward products of a read."""
    inner, outer = shape
    g = torch.Generator().manual_seed(inner)
    w = torch.randn(inner, outer, generator=g) * 0.02
    x = torch.randn(64, inner, generator=g)
    full = x @ w
    back = full @ w.T  # the backward's product against the transposed weight
    for rows in (16, 20, 36, 64):
        block = torch.cat([x[:5], x.new_zeros(rows - 5, inner)]) if rows == 16 else x[:rows]
        n = 5 if rows == 16 else rows
        assert torch.equal((block @ w)[:n], full[:n]), rows
        assert torch.equal(((block @ w) @ w.T)[:n], back[:n]), rows
