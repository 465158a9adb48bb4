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


def latent_read_direction(weights, ae: Autoencoder, layer: int, row: torch.Tensor, j: int):
    """ρ = ∂ encode_pre_act(input(r))[j] / ∂r at one residual row (scale detached), [d] (§9.5)."""
    part = ae.layers[layer]
    with torch.enable_grad():
        r = row.detach().clone().requires_grad_(True)
        x = ae_input(weights, ae, layer, r[None], True)[0]
        pre = (x - part.pre_bias if part.subtract_pre_bias else x) @ part.w_enc[
            j
        ] + part.latent_bias[j]
        (grad,) = torch.autograd.grad(pre, r)
    return grad


def vocab_input_direction(weights, ae: Autoencoder, layer: int, j: int) -> torch.Tensor:
    """w[v] = encode_pre_act(input(W_E[v]))[j], the embedding row taken as the MLP layer's input."""
    part = ae.layers[layer]
    x = _mlp_side_input(weights, ae, layer, weights.mlp_input(layer, weights.W_E))
    if part.subtract_pre_bias:
        x = x - part.pre_bias
    return x @ part.w_enc[j] + part.latent_bias[j]
