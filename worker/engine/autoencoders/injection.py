"""Online latents: each loaded AE replaces its input by reconstruction + error in every forward
pass (engine.md §9.4), through the substitution stage of ``Hooks``.

``z = encode(x)`` is computed from a detached ``x``: in TDB's graph the gradient reaching ``x``
through the encoder cancels exactly (it enters ``decode(z1)`` and leaves ``x − decode(z2)``), so
the gradient reaching ``x`` is the full ``∇out`` either way, and ``∇z1 = W_decᵀ ∇out`` —
unless the latents are ablated (forward or backward) at that layer: then the two paths no longer
cancel and TDB's whole graph is kept, encoder included. The
latent and error tensors go through their own hook points, so ablations, saving and gradients
work on them like on any other point.
"""

from __future__ import annotations

import torch

from ..hooks import Hooks
from .model import Autoencoder, AutoencoderLayer


def install(hooks: Hooks, autoencoders: list[Autoencoder]) -> None:
    for ae in autoencoders:
        for layer, part in ae.layers.items():
            hooks.substitute[(ae.input_point, layer)] = _substitution(ae, part, layer)


def _substitution(ae: Autoencoder, part: AutoencoderLayer, layer: int):
    key = (ae.latent_point, layer)

    def substitute(x: torch.Tensor, hooks: Hooks) -> torch.Tensor:
        if key in hooks.forward or key in hooks.backward:
            z = part.encode(x)  # an ablated latent's gradient no longer cancels: TDB's graph
        else:
            with torch.no_grad():
                z = part.encode(x)
        latents = z.clone()
        if x.requires_grad and not latents.requires_grad:
            latents.requires_grad_(True)
        latents = hooks.point(ae.latent_point, layer, latents)
        error = hooks.point(ae.error_point, layer, x - part.decode(z))
        return part.decode(latents) + error

    return substitute
