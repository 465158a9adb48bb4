"""Online latents: each loaded AE replaces its input by reconstruction + error in every forward
pass (engine.md §9.4), through the substitution stage of ``Hooks``.

``z = encode(x)`` is computed from a detached ``x``: in TDB's graph the gradient reaching ``x``
through the encoder cancels exactly (it enters ``decode(z1)`` and leaves ``x − decode(z2)``), so
the gradient reaching ``x`` is the full ``∇out`` either way, and ``∇z1 = W_decᵀ ∇out`` —
unless the latents are ablated (forward or backward) at that layer: then the two paths no longer
cancel and TDB's whole graph is kept, encoder included. The latent and error tensors go through
their own hook points, so ablations, saving and gradients work on them like on any other point.

Without an ablation of the latents, ``decode(z1)`` and ``decode(z2)`` are one value, so
``out = rec + err`` is ``x`` up to rounding: the decode is computed only when the error is
observed (saved, ablated or differentiated), and then over the active latents only; ``∇z1`` is
computed at the active latents only (``autoencoders.sparse``).
"""

from __future__ import annotations

import torch

from ..hooks import Hooks
from .model import Autoencoder, AutoencoderLayer
from .sparse import decode_active, decode_differentiable, encode_differentiable, through_latents


def install(hooks: Hooks, autoencoders: list[Autoencoder]) -> None:
    for ae in autoencoders:
        for layer, part in ae.layers.items():
            hooks.substitute[(ae.input_point, layer)] = _substitution(ae, part, layer)


def _observed(hooks: Hooks, key) -> bool:
    return (
        key in hooks.forward
        or key in hooks.backward
        or key in hooks.save_forward
        or key in hooks.save_grad
        or key in hooks.keep_attached
        or key in hooks.substitute
    )


def _substitution(ae: Autoencoder, part: AutoencoderLayer, layer: int):
    key = (ae.latent_point, layer)
    error_key = (ae.error_point, layer)

    def substitute(x: torch.Tensor, hooks: Hooks) -> torch.Tensor:
        if key in hooks.forward or key in hooks.backward:
            return _whole_graph(ae, part, layer, x, hooks)
        with torch.no_grad():
            z = part.encode(x)
        latents = z  # a fresh tensor: the hooks copy before they change it (hooks.overwrite)
        if x.requires_grad:
            latents = z.detach().requires_grad_(True)
        latents = hooks.point(ae.latent_point, layer, latents)
        rows = part.decoder_rows
        if not _observed(hooks, error_key):
            return through_latents(x, latents, rows)
        with torch.no_grad():
            rec = decode_active(z, rows) + part.pre_bias
        error = hooks.point(ae.error_point, layer, x - rec)
        return through_latents(rec, latents, rows) + error

    return substitute


def _whole_graph(ae, part: AutoencoderLayer, layer: int, x: torch.Tensor, hooks: Hooks):
    """TDB's graph as it is: an ablated latent's gradient no longer cancels through the encoder.
    Its products run over the active latents (``autoencoders.sparse``): the latents an ablation
    set, or zeroed, are differentiated too."""
    if part.activation == "identity":  # every latent's encoder derivative is 1: dense
        z = part.encode(x)
        latents = z.clone()
        if x.requires_grad and not latents.requires_grad:
            latents.requires_grad_(True)
        latents = hooks.point(ae.latent_point, layer, latents)
        error = hooks.point(ae.error_point, layer, x - part.decode(z))
        return part.decode(latents) + error
    rows = part.decoder_rows
    z = encode_differentiable(part, x)
    latents = z.clone()
    if x.requires_grad and not latents.requires_grad:
        latents.requires_grad_(True)
    latents = hooks.point(ae.latent_point, layer, latents)
    error = hooks.point(ae.error_point, layer, x - (decode_differentiable(z, rows) + part.pre_bias))
    needed = (latents != 0) | (z != 0)
    return decode_differentiable(latents, rows, needed) + part.pre_bias + error
