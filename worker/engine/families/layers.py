"""Building blocks that more than one family's forward pass uses: norms, activations, masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..hooks import Hooks


def layer_norm(
    x: torch.Tensor,
    gain: torch.Tensor,
    bias: torch.Tensor,
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
    return c / s * gain + bias


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def attention_mask(pad: torch.Tensor) -> torch.Tensor:
    """[B, q, k] True where attention is allowed: causal, and not across a pad boundary."""
    t = pad.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=pad.device).tril()
    across = pad[:, :, None] ^ pad[:, None, :]
    return causal[None] & ~across
