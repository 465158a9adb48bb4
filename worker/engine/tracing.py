"""Backward passes that start at an internal node instead of a loss (engine.md §6).

A traced node's scalar is recomputed from the residual stream tensor that precedes it (the input
of its layer's attention, or of its MLP), so that the gradient of that scalar flows through the
real model upstream of the residual and nowhere downstream. The same recomputation, on a detached
copy of the residual, gives the "final activation residual gradient" (engine.md §3.6) and the
downstream gradient of a two-stage trace through V (§6.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .families.gpt2 import GPT2Weights
from .families.layers import gelu_new, layer_norm

# LocationWithinLayer (engine.md §2.2)
END_OF_PREV_LAYER, ATTN, RESID_POST_ATTN, MLP, RESID_POST_MLP = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class TracedNode:
    """One traced scalar: a node, pre/post activation, detach flag and attention trace type."""

    node_type: str  # "mlp_neuron" | "attention_head"
    layer: int
    indices: tuple[int, ...]  # (t, i) or (q, k, h)
    post: bool
    detach_scale: bool
    trace_type: str | None  # None | "Q" | "K" | "QK" | "V"
    downstream: TracedNode | None = None
    # the AE of a latent node (engine.md §9.5)
    autoencoder: object | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_config(cls, cfg) -> TracedNode:
        node = cfg.node_index
        down = cfg.downstream_trace_config
        trace_type = cfg.attention_trace_type
        return cls(
            node_type=_value(node.node_type),
            layer=node.layer_index,
            indices=tuple(node.tensor_indices),
            post=_value(cfg.pre_or_post_act) == "post",
            detach_scale=bool(cfg.detach_layer_norm_scale),
            trace_type=None if trace_type is None else _value(trace_type),
            downstream=None if down is None else cls.from_config(down),
        )

    @classmethod
    def from_activation_index(cls, index) -> TracedNode:
        """The trace TDB derives from `activationIndexForWithinLayerGrad` (engine.md §6.6):
        pre for mlp.pre_act / attn.qk_logits, post for mlp.post_act / attn.qk_probs, QK for
        attention, layer-norm scale detached; "All" becomes an unknown (None) index."""
        location = _value(index.activation_location_type)
        attention = location.startswith("attn.")
        node_type = "attention_head" if attention else "mlp_neuron"
        if location == "online_autoencoder_latent":
            node_type = "autoencoder_latent"
        return cls(
            node_type=node_type,
            layer=index.layer_index,
            indices=tuple(None if i == "All" else i for i in index.tensor_indices),
            post=location in ("mlp.post_act", "attn.qk_probs", "online_autoencoder_latent"),
            detach_scale=True,
            trace_type="QK" if attention else None,
        )

    @property
    def reads_post_attention_residual(self) -> bool:
        """MLP neurons and MLP-type AE latents read rM; heads and attention latents x0/rOut."""
        if self.autoencoder is not None:
            return self.autoencoder.kind == "mlp"
        return self.node_type == "mlp_neuron"

    @property
    def residual_key(self) -> tuple[str, int | None]:
        """The hook point holding the residual stream this node reads."""
        if self.reads_post_attention_residual:
            return ("resid.post_attn", self.layer)
        return ("resid.post_emb", None) if self.layer == 0 else ("resid.post_mlp", self.layer - 1)

    @property
    def direction_location(self) -> tuple[int, int]:
        """(L_g, loc_g) of the gradient direction this trace defines (engine.md §3.1)."""
        if self.reads_post_attention_residual:
            return (self.layer, RESID_POST_ATTN)
        return (self.layer, END_OF_PREV_LAYER)


def _value(x) -> str:
    return getattr(x, "value", x)


def node_scalar(weights: GPT2Weights, node: TracedNode, resid: torch.Tensor) -> torch.Tensor:
    """The node's pre- or post-activation recomputed from `resid` [T, d] (one sequence)."""
    if node.autoencoder is not None:
        from .autoencoders.tracing import latent_scalar

        return latent_scalar(weights, node, resid)
    lw = weights.layers[node.layer]
    eps = weights.ln_eps
    if node.node_type == "mlp_neuron":
        t, i = node.indices[0], node.indices[-1]
        m = layer_norm(resid[t], lw.ln2_g, lw.ln2_b, eps, detach_scale=node.detach_scale)
        pre = m @ lw.w_in[:, i] + lw.b_in[i]
        return gelu_new(pre) if node.post else pre
    q, k, h = node.indices
    a = layer_norm(resid, lw.ln1_g, lw.ln1_b, eps, detach_scale=node.detach_scale)
    w_q, b_q = lw.W_Q
    w_k, b_k = lw.W_K
    scale = lw.d_head**-0.25
    query = (a[q] @ w_q[h] + b_q[h]) * scale
    if node.trace_type == "K":
        query = query.detach()
    if not node.post:
        key = (a[k] @ w_k[h] + b_k[h]) * scale
        if node.trace_type == "Q":
            key = key.detach()
        return query @ key
    q_pos = q % resid.shape[0]
    keys = (a[: q_pos + 1] @ w_k[h] + b_k[h]) * scale
    if node.trace_type == "Q":
        keys = keys.detach()
    probs = torch.softmax(keys @ query, dim=0)
    return probs[k % resid.shape[0]]


def residual_gradient(weights: GPT2Weights, node: TracedNode, resid: torch.Tensor) -> torch.Tensor:
    """∂(node scalar)/∂resid on a detached copy of `resid`: a constant [T, d] direction."""
    with torch.enable_grad():
        r = resid.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(node_scalar(weights, node, r), r)
    return grad


def final_residual_loss_gradient(weights: GPT2Weights, xf: torch.Tensor, loss_fn) -> torch.Tensor:
    """∂loss/∂xf for a detached copy of the final residual, with ln_f's scale detached (§6.4)."""
    with torch.enable_grad():
        x = xf.detach().clone().requires_grad_(True)
        normed = layer_norm(x, weights.lnf_g, weights.lnf_b, weights.ln_eps, detach_scale=True)
        (grad,) = torch.autograd.grad(loss_fn(normed @ weights.W_U), x)
    return grad


def value_direct_effect(
    weights: GPT2Weights, node: TracedNode, resid: torch.Tensor, g_hat: torch.Tensor
) -> torch.Tensor:
    """Stage 2 of a V trace: the head's direct effect along `g_hat`, differentiable through V only."""
    lw = weights.layers[node.layer]
    q, k, h = node.indices
    a = layer_norm(resid, lw.ln1_g, lw.ln1_b, weights.ln_eps, detach_scale=True)
    w_q, b_q = lw.W_Q
    w_k, b_k = lw.W_K
    w_v, b_v = lw.W_V
    scale = lw.d_head**-0.25
    q_pos = q % resid.shape[0]
    with torch.no_grad():
        query = (a[q_pos] @ w_q[h] + b_q[h]) * scale
        keys = (a[: q_pos + 1] @ w_k[h] + b_k[h]) * scale
        prob = torch.softmax(keys @ query, dim=0)[k % resid.shape[0]] if k <= q_pos else 0.0
    value = a[k] @ w_v[h] + b_v[h]
    return prob * ((value @ lw.W_O[h]) @ g_hat[q])
