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
    """``∇z = ∇out W_dec`` where z is nonzero (z may be a mask), 0 elsewhere ([..., m], dense).

    The sampled product runs latent by latent (the mask's transpose in CSR): each active
    latent's decoder row is read once, in order, against the few gradient rows of the tokens
    where it is active (those stay in cache), rather than once per (token, latent) pair."""
    z2 = z.reshape(-1, z.shape[-1])
    g2 = grad_out.reshape(-1, grad_out.shape[-1])
    latent, token = _latent_major_nonzeros(z2)
    if z2.numel() == 0 or latent.numel() > DENSE_ABOVE * z2.numel():
        return ((g2 @ rows.T) * (z2 != 0)).reshape(z.shape)
    crow = torch.zeros(z2.shape[1] + 1, dtype=torch.int64, device=z2.device)
    crow[1:] = torch.bincount(latent, minlength=z2.shape[1]).cumsum(0)
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        mask = torch.sparse_csr_tensor(
            crow,
            token,
            torch.ones_like(token, dtype=g2.dtype),
            (z2.shape[1], z2.shape[0]),
            check_invariants=False,  # built from nonzero(): sorted, in range
        )
        picked = torch.sparse.sampled_addmm(mask, rows, g2.T, beta=0.0).values()
    out = torch.zeros_like(z2, dtype=g2.dtype)
    out.view(-1)[token * z2.shape[1] + latent] = picked
    return out.reshape(z.shape)


def _latent_major_nonzeros(z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z2's nonzeros [T, m] as (latent, token), latent-major and tokens ascending: what
    ``nonzero(z2.T)`` lists, found in the contiguous z2 and sorted by one key (the scan of the
    strided transpose took 3-4 times as long as this, 20-25 ms a layer at 120 x 32,768)."""
    token, latent = torch.nonzero(z2, as_tuple=True)
    key = (latent * z2.shape[0] + token).sort().values
    return key // z2.shape[0], key % z2.shape[0]


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


# -- a layer whose latents are ablated: TDB's whole graph, over the active latents ----------------


class _DecodeActive(torch.autograd.Function):
    """``z W_decᵀ`` (no bias) over z's nonzeros; the backward gives z ``∇out W_dec`` where
    ``needed`` is nonzero (z's own nonzeros, or more), 0 elsewhere."""

    @staticmethod
    def forward(ctx, z, rows, needed):
        ctx.save_for_backward(needed, rows)
        return decode_active(z.detach(), rows)

    @staticmethod
    def backward(ctx, grad_out):
        needed, rows = ctx.saved_tensors
        return grad_at_active(needed, grad_out, rows), None, None


def decode_differentiable(z: torch.Tensor, rows: torch.Tensor, needed=None) -> torch.Tensor:
    """``decode(z)`` without its bias, differentiable at the ``needed`` latents (z's nonzeros
    unless told): where a latent is 0 and no ablation set it, its gradient meets an encoder
    derivative of 0 (ReLU, JumpReLU, TopK), and ``z · ∇z`` reads it multiplied by 0."""
    needed = (z != 0) if needed is None else needed
    return _DecodeActive.apply(z, rows, needed.detach())


class _EncodeActive(torch.autograd.Function):
    """``encode(x)`` for a ReLU, JumpReLU or TopK AE; the backward is ``(∇z ⊙ [z > 0]) W_enc``,
    a sparse-row product over the active latents (their derivative is 1, the others' 0)."""

    @staticmethod
    def forward(ctx, x, part):
        z = part.encode(x.detach())
        ctx.save_for_backward(z, part.w_enc)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        z, w_enc = ctx.saved_tensors
        grad_pre = grad_z * (z > 0)
        return decode_active(grad_pre, w_enc), None


def encode_differentiable(part, x: torch.Tensor) -> torch.Tensor:
    """``part.encode(x)`` whose gradient reads only the active latents' encoder rows; an
    Identity AE (every latent's derivative 1) keeps autograd's dense graph."""
    if part.activation == "identity" or not x.requires_grad:
        return part.encode(x)
    return _EncodeActive.apply(x, part)
