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
            z = encode_sequences(part, x)
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


def encode_sequences(part: AutoencoderLayer, x: torch.Tensor) -> torch.Tensor:
    """``part.encode(x)`` for x [B, T, n] (no gradient), the encoder product computed once per
    distinct sequence and copied to its equals: the sequences of a pass are often equal at a
    layer (TDB's UI pair is one prompt twice, ablated at one layer, so equal before it; a sweep's
    are equal before their ablations), and the encoder is the pass's largest product. The
    product of the distinct sequences is whole sequences of a pass, as wide as the pass and a
    multiple of 4 (README, "Shared passes"): each row gets the bits the whole product gives it."""
    source = equal_sequences(x)
    distinct = sorted(set(source))
    if len(distinct) == len(source):
        return part.encode(x)
    z = part.encode(x[distinct])
    at = {b: i for i, b in enumerate(distinct)}
    return z[[at[b] for b in source]]  # a fresh tensor, each sequence its own copy


def equal_sequences(x: torch.Tensor) -> list[int]:
    """For each sequence of x [B, ...], the first one equal to it (itself if none): sequences
    with the same sum are compared whole, the others cannot be equal (a sum that rounds apart
    only loses a sharing; NaNs are never equal)."""
    if x.dim() < 2 or x.shape[0] == 1:
        return list(range(x.shape[0]))
    sums = x.reshape(x.shape[0], -1).sum(dim=1).tolist()
    firsts: dict[float, list[int]] = {}
    source = []
    for b, total in enumerate(sums):
        candidates = firsts.setdefault(total, [])
        match = next((c for c in candidates if torch.equal(x[c], x[b])), None)
        if match is None:
            candidates.append(b)
        source.append(b if match is None else match)
    return source


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
