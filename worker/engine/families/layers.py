"""Building blocks that more than one family's forward pass uses: norms, activations, masks,
rotary position embeddings, and the weight products of a pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..hooks import Hooks

# Rows (positions) of one weight product in a pass, made of whole sequences. Measured on MKL:
# the rows of a product of M rows and inner size K round differently once M passes about K/8+16
# (from K of about 900: 144 rows at K 1024, 400 at 3072), so a pass of many sequences would not
# give a row the bits it gets alone. Products of whole sequences up to PRODUCT_ROWS rows (or one
# sequence, if longer) keep every product of a shared pass in the regime of the row's own pass.
PRODUCT_ROWS = 64


def weight_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for activations x [B, T, k], as products of whole sequences of at most
    max(PRODUCT_ROWS, T) rows each (the backward runs in the same row blocks)."""
    per = max(1, PRODUCT_ROWS // x.shape[1])
    if x.shape[0] <= per:
        return x @ w
    return torch.cat([part @ w for part in x.split(per)])


def layer_norm(
    x: torch.Tensor,
    gain: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    hooks: Hooks | None = None,
    scale_point: tuple[str, int | None] | None = None,
    detach_scale: bool = False,
) -> torch.Tensor:
    """LN(x) = (x - mean) / s * gain + bias with s = sqrt(mean((x - mean)^2) + eps).

    The scale s ([..., 1]) passes through its hook point, which is where TDB's
    `*.scale` ablations and detachments act.
    """
    c = x - x.mean(dim=-1, keepdim=True)
    s = torch.sqrt((c * c).mean(dim=-1, keepdim=True) + eps)
    if detach_scale:
        s = s.detach()
    if hooks is not None and scale_point is not None:
        s = hooks.point(scale_point[0], scale_point[1], s)
    out = c / s * gain
    return out if bias is None else out + bias


def rms_norm(
    x: torch.Tensor,
    gain: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    hooks: Hooks | None = None,
    scale_point: tuple[str, int | None] | None = None,
    detach_scale: bool = False,
) -> torch.Tensor:
    """RMS(x) = x / s * gain with s = sqrt(mean(x^2) + eps) (Llama's RMSNorm; no centring, no
    bias: `bias` is accepted so both norms share one signature). s passes through its hook point."""
    s = torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    if detach_scale:
        s = s.detach()
    if hooks is not None and scale_point is not None:
        s = hooks.point(scale_point[0], scale_point[1], s)
    return x / s * gain


NORMS = {"layer_norm": layer_norm, "rms_norm": rms_norm}


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_exact(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


# config.json's activation names -> the function (families.md §1.1)
ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def attention_mask(pad: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """[B, q, k] True where attention is allowed: causal, and not across a pad boundary; with a
    sliding window also only where q - k < window (transformers' sliding-window mask)."""
    t = pad.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=pad.device).tril()
    if window is not None:
        causal = causal & ~torch.ones(t, t, dtype=torch.bool, device=pad.device).tril(-window)
    across = pad[:, :, None] ^ pad[:, None, :]
    return causal[None] & ~across


def rotary_tables(
    inv_freq: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., R] for integer `positions` [...] (HF's layout: frequencies repeated)."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first R = cos.shape[-1] channels of x (HF's `rotate_half`);
    channels >= R pass unchanged (GPT-NeoX's partial rotary). cos/sin broadcast against x."""
    r = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables in float32, applied in x's dtype
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    return out if x_pass.shape[-1] == 0 else torch.cat((out, x_pass), dim=-1)
