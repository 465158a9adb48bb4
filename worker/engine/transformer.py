"""The GPT-2 forward pass written out (engine.md §1.3), every hook point a real tensor.

Written from the weights rather than by calling Hugging Face modules, so that scaled Q/K, the
masked [q, k, head] attention logits and the layer-norm scales exist as tensors that can be
observed, replaced and differentiated. Parameters never require grad: only activations get
gradients, which is all a derived scalar needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .hooks import Hooks
from .weights import GPT2Weights, LayerWeights


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


def embed(weights: GPT2Weights, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    positions = ((~pad).cumsum(dim=1) - 1).clamp(min=0)
    return weights.W_E[tokens] + weights.W_P[positions]


def attention_block(
    lw: LayerWeights,
    layer: int,
    a: torch.Tensor,
    mask: torch.Tensor,
    hooks: Hooks,
) -> torch.Tensor:
    """Attention of one layer on its normalised input `a` [B, T, d]; returns ΔA (with b_O)."""
    b, t, d = a.shape
    h, e = lw.n_heads, lw.d_head
    scale = e**-0.25
    q, k, v = (a @ lw.w_qkv + lw.b_qkv).split(d, dim=-1)
    q = hooks.point("attn.q", layer, q.view(b, t, h, e) * scale)
    k = hooks.point("attn.k", layer, k.view(b, t, h, e) * scale)
    v = hooks.point("attn.v", layer, v.view(b, t, h, e))
    logits = torch.einsum("bqhe,bkhe->bqkh", q, k)
    logits = logits.masked_fill(~mask[..., None], float("-inf"))
    logits = hooks.point("attn.qk_logits", layer, logits)
    probs = hooks.point("attn.qk_probs", layer, torch.softmax(logits, dim=2))
    z = hooks.point("attn.v_out", layer, torch.einsum("bqkh,bkhe->bqhe", probs, v))
    return z.reshape(b, t, d) @ lw.w_o + lw.b_o


def forward(
    weights: GPT2Weights,
    tokens: torch.Tensor,
    pad: torch.Tensor,
    hooks: Hooks,
    needs_grad: bool,
) -> torch.Tensor:
    """Run the model on right-padded `tokens` [B, T]; returns logits [B, T, V]."""
    eps = weights.ln_eps
    mask = attention_mask(pad)
    x = embed(weights, tokens, pad)
    if needs_grad:
        x.requires_grad_(True)
    resid = hooks.point("resid.post_emb", None, x)
    for layer, lw in enumerate(weights.layers):
        a = layer_norm(resid, lw.ln1_g, lw.ln1_b, eps, hooks, ("attn_ln.scale", layer))
        delta_attn = hooks.point(
            "resid.delta_attn", layer, attention_block(lw, layer, a, mask, hooks)
        )
        resid = hooks.point("resid.post_attn", layer, resid + delta_attn)
        m = layer_norm(resid, lw.ln2_g, lw.ln2_b, eps, hooks, ("mlp_ln.scale", layer))
        pre = hooks.point("mlp.pre_act", layer, m @ lw.w_in + lw.b_in)
        post = hooks.point("mlp.post_act", layer, gelu_new(pre))
        delta_mlp = hooks.point("resid.delta_mlp", layer, post @ lw.w_out + lw.b_out)
        resid = hooks.point("resid.post_mlp", layer, resid + delta_mlp)
    final = layer_norm(resid, weights.lnf_g, weights.lnf_b, eps, hooks, ("resid.ln_f.scale", None))
    return hooks.point("logits", None, final @ weights.W_U)
