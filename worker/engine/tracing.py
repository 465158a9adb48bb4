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

from .families.base import ModelWeights

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
    parallel: bool = False  # the model's blocks are parallel: an MLP reads the layer's input

    @classmethod
    def from_config(cls, cfg, parallel: bool = False) -> TracedNode:
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
            downstream=None if down is None else cls.from_config(down, parallel),
            parallel=parallel,
        )

    @classmethod
    def from_activation_index(cls, index, parallel: bool = False) -> TracedNode:
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
            parallel=parallel,
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
        if self.reads_post_attention_residual and not self.parallel:
            return ("resid.post_attn", self.layer)
        return ("resid.post_emb", None) if self.layer == 0 else ("resid.post_mlp", self.layer - 1)

    @property
    def direction_location(self) -> tuple[int, int]:
        """(L_g, loc_g) of the gradient direction this trace defines (engine.md §3.1); an MLP in
        a parallel block reads the layer's input, so its direction is at END_OF_PREV_LAYER."""
        if self.reads_post_attention_residual and not self.parallel:
            return (self.layer, RESID_POST_ATTN)
        return (self.layer, END_OF_PREV_LAYER)


def _value(x) -> str:
    return getattr(x, "value", x)


def attention_input(
    weights: ModelWeights, layer: int, resid: torch.Tensor, detach_scale: bool = False
) -> torch.Tensor:
    """The layer's attention input N1(resid), the norm's scale optionally held constant."""
    return weights.attention_input(layer, resid, detach_scale)


def mlp_input(
    weights: ModelWeights, layer: int, resid: torch.Tensor, detach_scale: bool = False
) -> torch.Tensor:
    """The layer's MLP input N2(resid), the norm's scale optionally held constant."""
    return weights.mlp_input(layer, resid, detach_scale)


def _masked_keys_logits(weights, layer: int, keys, query, q_pos: int) -> torch.Tensor:
    """Logits of one query against keys 0..q_pos, -inf outside the layer's sliding window."""
    logits = keys @ query
    window = weights.window(layer)
    if window is not None and q_pos + 1 > window:
        outside = torch.arange(q_pos + 1, device=logits.device) <= q_pos - window
        logits = logits.masked_fill(outside, float("-inf"))
    return logits


def node_scalar(weights: ModelWeights, node: TracedNode, resid: torch.Tensor) -> torch.Tensor:
    """The node's pre- or post-activation recomputed from `resid` [T, d] (one sequence): the
    family's norm, rotary at the real positions, K/V of the query head's group, its window;
    for an AE latent, its encoder on the reconstituted AE input (engine.md §9.5)."""
    if node.autoencoder is not None:
        from .autoencoders.tracing import latent_scalar

        return latent_scalar(weights, node, resid)
    if node.node_type == "mlp_neuron":
        t, i = node.indices[0], node.indices[-1]
        m = mlp_input(weights, node.layer, resid[t], node.detach_scale)
        return weights.mlp_neuron(node.layer, m, i, node.post)
    q, k, h = node.indices
    layer = node.layer
    a = attention_input(weights, layer, resid, node.detach_scale)
    n = resid.shape[0]
    q_pos = q % n
    query = weights.head_vectors(layer, 0, a[q_pos], h, q_pos)
    if node.trace_type == "K":
        query = query.detach()
    if not node.post:
        k_pos = k % n
        key = weights.head_vectors(layer, 1, a[k_pos], h, k_pos)
        if node.trace_type == "Q":
            key = key.detach()
        return query @ key
    keys = weights.head_vectors(layer, 1, a[: q_pos + 1], h, torch.arange(q_pos + 1))
    if node.trace_type == "Q":
        keys = keys.detach()
    probs = torch.softmax(_masked_keys_logits(weights, layer, keys, query, q_pos), dim=0)
    return probs[k % n]


def residual_gradient(weights: ModelWeights, node: TracedNode, resid: torch.Tensor) -> torch.Tensor:
    """∂(node scalar)/∂resid on a detached copy of `resid`: a constant [T, d] direction."""
    with torch.enable_grad():
        r = resid.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(node_scalar(weights, node, r), r)
    return grad


def final_residual_loss_gradient(weights: ModelWeights, xf: torch.Tensor, loss_fn) -> torch.Tensor:
    """∂loss/∂xf for a detached copy of the final residual, with the final norm's scale detached
    (§6.4)."""
    with torch.enable_grad():
        x = xf.detach().clone().requires_grad_(True)
        normed = weights.final_input(x, detach_scale=True)
        (grad,) = torch.autograd.grad(loss_fn(normed @ weights.W_U), x)
    return grad


def value_direct_effect(
    weights: ModelWeights, node: TracedNode, resid: torch.Tensor, g_hat: torch.Tensor
) -> torch.Tensor:
    """Stage 2 of a V trace: the head's direct effect along `g_hat`, differentiable through V only."""
    layer = node.layer
    lw = weights.layers[layer]
    q, k, h = node.indices
    a = attention_input(weights, layer, resid, detach_scale=True)
    q_pos = q % resid.shape[0]
    k_pos = k % resid.shape[0]
    with torch.no_grad():
        query = weights.head_vectors(layer, 0, a[q_pos], h, q_pos)
        keys = weights.head_vectors(layer, 1, a[: q_pos + 1], h, torch.arange(q_pos + 1))
        logits = _masked_keys_logits(weights, layer, keys, query, q_pos)
        prob = torch.softmax(logits, dim=0)[k_pos] if k_pos <= q_pos else 0.0
    value = weights.head_vectors(layer, 2, a[k], h)
    return prob * ((value @ lw.W_O[h]) @ g_hat[q])
