"""The decoder forward pass every family shares, written out so that every hook point is a real
tensor (engine.md §1.3, families.md §2): embeddings, then per layer a norm, attention (rotary,
grouped-query, sliding window where the architecture has them), an MLP (gated or not) read from
the post-attention residual or, in a parallel block, from the layer's input, and the final norm.

The family only changes what `ModelWeights.arch` says; GPT-2 runs exactly the operations it ran
when it had a forward pass of its own (one fused Q/K/V matmul, learned positions, LayerNorm).
Parameters never require grad: only activations get gradients.
"""

from __future__ import annotations

import torch

from ..hooks import Hooks
from .base import LayerWeights, ModelWeights
from .layers import attention_mask, rotate, weight_product


def positions_of(pad: torch.Tensor) -> torch.Tensor:
    """Real-token positions of right-padded rows: cumsum(not pad) - 1 (pads clamp to 0.. on)."""
    return ((~pad).cumsum(dim=1) - 1).clamp(min=0)


def embed(weights: ModelWeights, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    x = weights.W_E[tokens]
    return x if weights.W_P is None else x + weights.W_P[positions]


def attention_block(
    weights: ModelWeights,
    lw: LayerWeights,
    layer: int,
    a: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    hooks: Hooks,
    tables: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of one layer on its normalised input `a` [B, T, d]; returns ΔA (with b_O).
    `tables`: the rotary cos/sin at `positions` (`ModelWeights.rotary_tables`), computed once per
    forward pass rather than per layer; derived here when not given."""
    b, t, _ = a.shape
    h, h_kv, e = lw.n_heads, lw.n_kv_heads, lw.d_head
    scale = e**-0.25
    q, k, v = (weight_product(a, lw.w_qkv) + lw.b_qkv).split(lw.split_sizes, dim=-1)
    q, k, v = q.view(b, t, h, e), k.view(b, t, h_kv, e), v.view(b, t, h_kv, e)
    if weights.arch.rotary_inv_freq is not None:
        cos, sin = tables if tables is not None else weights.rotary_tables(positions)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if h_kv != h:
        k, v = k.repeat_interleave(h // h_kv, dim=2), v.repeat_interleave(h // h_kv, dim=2)
    q = hooks.point("attn.q", layer, q * scale)
    k = hooks.point("attn.k", layer, k * scale)
    v = hooks.point("attn.v", layer, v)
    logits = torch.einsum("bqhe,bkhe->bqkh", q, k)
    logits = logits.masked_fill(~mask[..., None], float("-inf"))
    logits = hooks.point("attn.qk_logits", layer, logits)
    probs = hooks.point("attn.qk_probs", layer, torch.softmax(logits, dim=2))
    z = hooks.point("attn.v_out", layer, torch.einsum("bqkh,bkhe->bqhe", probs, v))
    return weight_product(z.reshape(b, t, h * e), lw.w_o) + lw.b_o


def mlp_block(weights: ModelWeights, lw: LayerWeights, layer: int, m, hooks: Hooks):
    """MLP of one layer on its normalised input `m`; returns ΔM (with b_out)."""
    pre = hooks.point("mlp.pre_act", layer, weight_product(m, lw.w_in) + lw.b_in)
    post = weights.activation(pre)
    if lw.w_up is not None:
        post = post * (weight_product(m, lw.w_up) + lw.b_up)
    post = hooks.point("mlp.post_act", layer, post)
    return weight_product(post, lw.w_out) + lw.b_out


class _Unembedding(torch.autograd.Function):
    """`final @ W_U` whose backward multiplies only the rows of the logits' gradient that are
    not all zero. A logit-difference loss reads one position per sequence and a trace none, so
    the dense [B, T, V] x [V, d] product of autograd was a whole vocabulary GEMM per pass spent
    mostly on zero rows. The nonzero rows are multiplied in a block padded with zero rows to at
    least 16 and a multiple of 4 rows, the shapes at which a row's float32 bits do not depend on
    the others (README, "Shared passes"), so the gradient is the dense product's, bit for bit."""

    @staticmethod
    def forward(ctx, final: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w_u)
        return weight_product(final, w_u)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w_u,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        rows = torch.nonzero(flat.ne(0).any(dim=-1)).flatten()
        out = flat.new_zeros(flat.shape[0], w_u.shape[0])
        if rows.numel():
            width = max(16, -(-rows.numel() // 4) * 4)
            block = flat.new_zeros(width, flat.shape[1])
            block[: rows.numel()] = flat[rows]
            out[rows] = (block @ w_u.T)[: rows.numel()]
        return out.reshape(*grad.shape[:-1], w_u.shape[0]), None


def unembed(final: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
    if w_u.requires_grad or not final.requires_grad:
        return weight_product(final, w_u)
    return _Unembedding.apply(final, w_u)


def forward(
    weights: ModelWeights,
    tokens: torch.Tensor,
    pad: torch.Tensor,
    hooks: Hooks,
    needs_grad: bool,
) -> torch.Tensor:
    """Run the model on right-padded `tokens` [B, T]; returns logits [B, T, V]."""
    positions = positions_of(pad)
    masks: dict[int | None, torch.Tensor] = {}
    x = embed(weights, tokens, positions)
    tables = None if weights.arch.rotary_inv_freq is None else weights.rotary_tables(positions)
    if needs_grad:
        x.requires_grad_(True)
    resid = hooks.point("resid.post_emb", None, x)
    for layer, lw in enumerate(weights.layers):
        window = weights.window(layer)
        if window not in masks:
            masks[window] = attention_mask(pad, window)
        a = weights.norm(resid, lw.ln1_g, lw.ln1_b, hooks, ("attn_ln.scale", layer))
        delta_attn = hooks.point(
            "resid.delta_attn",
            layer,
            attention_block(weights, lw, layer, a, masks[window], positions, hooks, tables),
        )
        if weights.parallel:
            mlp_in = resid
            after_attn = resid + delta_attn
        else:
            after_attn = mlp_in = hooks.point("resid.post_attn", layer, resid + delta_attn)
        m = weights.norm(mlp_in, lw.ln2_g, lw.ln2_b, hooks, ("mlp_ln.scale", layer))
        delta_mlp = hooks.point("resid.delta_mlp", layer, mlp_block(weights, lw, layer, m, hooks))
        resid = hooks.point("resid.post_mlp", layer, after_attn + delta_mlp)
    final = weights.norm(resid, weights.lnf_g, weights.lnf_b, hooks, ("resid.ln_f.scale", None))
    return hooks.point("logits", None, unembed(final, weights.W_U))
