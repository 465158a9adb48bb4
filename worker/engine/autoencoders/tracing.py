"""Latents recomputed from the residual stream that precedes them (engine.md §9.5): the scalar a
trace from a latent back-propagates, and the read direction of a latent for token scoring.

The AE input is reconstituted from ``r`` the way the model computes it: ``mlp_post_act`` =
``act(N2*(r) W_in + b_in)`` (times the up projection when gated), ``resid_delta_mlp`` = the MLP block output with ``b_out``, and
``resid_delta_attn`` = the whole attention block output with ``b_O`` (the family's own attention
block, run without hooks), the feeding layer norm's scale detached when the trace says so.
"""

from __future__ import annotations

import torch

from ..families.decoder import attention_block, mlp_block
from ..families.layers import attention_mask
from ..hooks import Hooks
from .model import Autoencoder


def ae_input(weights, ae: Autoencoder, layer: int, resid: torch.Tensor, detach_scale: bool):
    """The AE's input [T, n] recomputed from the residual [T, d] that precedes it."""
    lw = weights.layers[layer]
    if ae.input_dst == "resid_delta_attn":
        a = weights.attention_input(layer, resid, detach_scale)
        pad = torch.zeros(1, resid.shape[0], dtype=torch.bool, device=resid.device)
        positions = torch.arange(resid.shape[0], device=resid.device)[None]
        mask = attention_mask(pad, weights.window(layer))
        return attention_block(weights, lw, layer, a[None], mask, positions, Hooks())[0]
    return _mlp_side_input(weights, ae, layer, weights.mlp_input(layer, resid, detach_scale))


def _mlp_side_input(weights, ae: Autoencoder, layer: int, m: torch.Tensor) -> torch.Tensor:
    """``mlp_post_act`` or the MLP block's output (with ``b_out``) for normalised MLP input m."""
    hooks = Hooks(keep_attached={("mlp.post_act", layer)})  # attached: gradients flow through
    delta = mlp_block(weights, weights.layers[layer], layer, m, hooks)
    return hooks.attached[("mlp.post_act", layer)] if ae.input_dst == "mlp_post_act" else delta


def latent_scalar(weights, node, resid: torch.Tensor) -> torch.Tensor:
    """The traced latent (t, j): encode_pre_act (pre) or encode (post) of the reconstituted input."""
    ae: Autoencoder = node.autoencoder
    part = ae.layers[node.layer]
    t, j = node.indices[0], node.indices[-1]
    if ae.input_dst == "resid_delta_attn":
        x = ae_input(weights, ae, node.layer, resid[: (t % resid.shape[0]) + 1], node.detach_scale)
        x = x[-1]
    else:
        row = t % resid.shape[0]
        x = ae_input(weights, ae, node.layer, resid[row : row + 1], node.detach_scale)[0]
    pre = part.encode_pre_act(x)
    return part.activate(pre[None])[0, j] if node.post else pre[j]


READ_ROWS = (16, 64)  # rows of one read product: at least 16 and a multiple of 4, at most 64


def latent_read_directions(weights, ae: Autoencoder, layer: int, rows: torch.Tensor, latents):
    """ρ_i = ∂ encode_pre_act(input(r_i))[latents[i]] / ∂r_i for residual rows r [n, d] (scale
    detached), [n, d] (§9.5), for an AE whose input is computed row by row (an MLP-side one).

    One backward per block of rows: the rows are independent, so the gradient of the sum is
    each row's (one backward per latent cost ~2 ms, mostly autograd and two one-row products).
    A block has READ_ROWS rows (zero rows pad a short one), the shapes at which a row's float32
    bits do not depend on the other rows, so a latent's read is the same whatever it is read
    with (the token-score keys are its bytes, shared across sub-requests)."""
    part = ae.layers[layer]
    least, most = READ_ROWS
    out = []
    for block, block_latents in zip(rows.split(most), latents.split(most), strict=True):
        n = block.shape[0]
        width = max(least, -(-n // 4) * 4)
        padded = torch.cat([block, block.new_zeros(width - n, block.shape[1])])
        picked = torch.cat([block_latents, block_latents.new_zeros(width - n)])
        with torch.enable_grad():
            r = padded.detach().clone().requires_grad_(True)
            x = _mlp_side_input(weights, ae, layer, weights.mlp_input(layer, r[None], True))[0]
            if part.subtract_pre_bias:
                x = x - part.pre_bias
            pre = (x * part.w_enc[picked]).sum(dim=-1)  # the latent bias has no gradient
            (grad,) = torch.autograd.grad(pre.sum(), r)
        out.append(grad[:n])
    return torch.cat(out)


def vocab_input_direction(weights, ae: Autoencoder, layer: int, j: int) -> torch.Tensor:
    """w[v] = encode_pre_act(input(W_E[v]))[j], the embedding row taken as the MLP layer's input."""
    part = ae.layers[layer]
    x = _mlp_side_input(weights, ae, layer, weights.mlp_input(layer, weights.W_E))
    if part.subtract_pre_bias:
        x = x - part.pre_bias
    return x @ part.w_enc[j] + part.latent_bias[j]
