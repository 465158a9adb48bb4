"""Decoding and differentiating only the active latents (2-3% of a real AE's per token).

A latent that is 0 at a token adds nothing to ``decode(z)`` there, and its gradient is read only
multiplied by its value (``z · ∇z``, the one AE DST that reads ``∇z``; the encoder's ReLU, TopK
and JumpReLU all have derivative 0 where they output 0), so both are computed over the nonzero
``(token, latent)`` pairs only: ``decode`` as a sparse-row x dense product with the decoder rows
(``W_dec``ᵀ, kept contiguous per latent, ``AutoencoderLayer``), ``∇z`` as the sampled product
``(∇out W_dec)`` at those pairs. Both read only the decoder rows they need, without copying them.
A dense ``z`` (an Identity AE, a tiny AE with many active latents) takes the dense products:
the results are the same to rounding either way.
"""

from __future__ import annotations

import warnings

import torch

# above this share of nonzero latents, dense products are as fast (and exact the same way)
DENSE_ABOVE = 0.25


def _csr(z2: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        return z2.to_sparse_csr()


def is_sparse_enough(z: torch.Tensor) -> bool:
    return z.numel() > 0 and int(torch.count_nonzero(z)) <= DENSE_ABOVE * z.numel()


def decode_active(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``z W_decᵀ`` (no bias) for z [..., m] and decoder rows [m, n], over z's nonzeros only."""
    z2 = z.reshape(-1, z.shape[-1])
    if not is_sparse_enough(z2):
        return (z2 @ rows).reshape(*z.shape[:-1], rows.shape[1])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        out = torch.sparse.mm(_csr(z2), rows)
    return out.reshape(*z.shape[:-1], rows.shape[1])


def grad_at_active(z: torch.Tensor, grad_out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``∇z = ∇out W_dec`` where z is nonzero, 0 elsewhere ([..., m], dense)."""
    z2 = z.reshape(-1, z.shape[-1])
    g2 = grad_out.reshape(-1, grad_out.shape[-1])
    if not is_sparse_enough(z2):
        return ((g2 @ rows.T) * (z2 != 0)).reshape(z.shape)
    mask = _csr((z2 != 0).to(g2.dtype))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        picked = torch.sparse.sampled_addmm(mask, g2, rows.T, beta=0.0)
        out = picked.to_dense()
    return out.reshape(z.shape)


class _ThroughLatents(torch.autograd.Function):
    """``base + (decode(latents) − decode(z))`` where ``latents`` equals ``z`` in value: the
    forward value is ``base``; the backward gives ``base`` the full ``∇out`` and ``latents`` its
    gradient ``∇out W_dec`` at the active latents (engine.md §9.4)."""

    @staticmethod
    def forward(ctx, base, latents, rows):
        ctx.save_for_backward(latents.detach(), rows)
        return base.clone()

    @staticmethod
    def backward(ctx, grad_out):
        latents, rows = ctx.saved_tensors
        grad_latents = None
        if ctx.needs_input_grad[1]:
            grad_latents = grad_at_active(latents, grad_out, rows)
        return grad_out, grad_latents, None


def through_latents(base: torch.Tensor, latents: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if not (base.requires_grad or latents.requires_grad):
        return base
    return _ThroughLatents.apply(base, latents, rows)
