"""Derived scalar types (DSTs): quantities computed from saved activations, gradients and
weights after the pass (engine.md §3.2-§3.7).

Each DST is a `DstDef`: which hook points it reads (forward values, gradients), whether it needs
the gradient direction g, and a function computing its tensor for one sequence at one layer.
Attention norms and projections factor through the per-head value vectors VO[k, h] = V W_O, so
no tokens x tokens x heads x d_model tensor is built unless a DST is exactly that tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.errors import UnsupportedError

from .tracing import (
    ATTN,
    END_OF_PREV_LAYER,
    MLP,
    RESID_POST_ATTN,
    RESID_POST_MLP,
)
from .view import ElementView


def gate(layer: int | None, loc: int, lg: int, loc_g: int) -> bool:
    """π: does a node at (layer, loc) precede the direction's location?"""
    return layer is None or layer < lg or (layer == lg and loc < loc_g)


def flatten_pairs(x: torch.Tensor) -> torch.Tensor:
    """[T, T, ...] -> [T(T+1)/2, ...] over k <= q, row-major (§3.4)."""
    t = x.shape[0]
    rows, cols = torch.tril_indices(t, t, device=x.device)
    return x[rows, cols]


Fn = Callable[[ElementView, int | None], torch.Tensor]


@dataclass(frozen=True)
class DstDef:
    layered: bool
    forward: Fn
    backward: Fn | None = None
    points: tuple[str, ...] = ()  # forward values read
    grad_points: tuple[str, ...] = ()  # gradients read by the forward value
    backward_grad_points: tuple[str, ...] = ()  # gradients read by the backward value
    direction: bool = False  # reads g (the real backward pass at the trace/loss location)
    activation_direction: bool = False  # reads g̃ (recomputed, no backward pass)
    layers: Callable[[ElementView], list[int]] | None = None  # layered, but not every layer (AEs)


def _raw(point: str, layered: bool) -> DstDef:
    return DstDef(
        layered=layered,
        forward=lambda v, layer: v.fwd(point, layer),
        backward=lambda v, layer: v.grad(point, layer),
        points=(point,),
        backward_grad_points=(point,),
    )


RAW = {
    "logits": ("logits", False),
    "resid_post_embedding": ("resid.post_emb", False),
    "mlp_pre_act": ("mlp.pre_act", True),
    "mlp_post_act": ("mlp.post_act", True),
    "resid_delta_mlp": ("resid.delta_mlp", True),
    "resid_post_mlp": ("resid.post_mlp", True),
    "attn_query": ("attn.q", True),
    "attn_key": ("attn.k", True),
    "attn_value": ("attn.v", True),
    "attn_qk_logits": ("attn.qk_logits", True),
    "attn_qk_probs": ("attn.qk_probs", True),
    "attn_weighted_sum_of_values": ("attn.v_out", True),
    "resid_delta_attn": ("resid.delta_attn", True),
    "resid_post_attn": ("resid.post_attn", True),
    "resid_final_layer_norm_scale": ("resid.ln_f.scale", False),
    "attn_input_layer_norm_scale": ("attn_ln.scale", True),
    "mlp_input_layer_norm_scale": ("mlp_ln.scale", True),
}

DSTS: dict[str, DstDef] = {name: _raw(point, layered) for name, (point, layered) in RAW.items()}


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def _norm(point: str) -> Fn:
    return lambda v, layer: v.fwd(point, layer).norm(dim=-1, keepdim=True)


def _direction(v: ElementView, recomputed: bool) -> tuple[torch.Tensor, int, int]:
    """g from the real backward pass, or g̃ recomputed from forward values (§3.6)."""
    return v.activation_direction() if recomputed else v.direction()


def _projection(point: str, loc: int, activation: bool = False) -> Fn:
    def fn(v: ElementView, layer):
        g, lg, loc_g = _direction(v, activation)
        x = v.fwd(point, layer)
        if not gate(layer, loc, lg, loc_g):
            return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return _dot(x, g)

    return fn


def _mlp_write_to_grad(activation: bool) -> Fn:
    def fn(v: ElementView, layer):
        post = v.fwd("mlp.post_act", layer)
        g, lg, loc_g = _direction(v, activation)
        if not gate(layer, MLP, lg, loc_g):
            return torch.zeros_like(post)
        # a loss-driven direction is zero but at the last token: project only the rows that are not
        rows = torch.nonzero(g.any(dim=-1)).flatten()
        out = torch.zeros_like(post)
        out[rows] = post[rows] * (g[rows] @ v.weights.layers[layer].w_out.T)
        return out

    return fn


def _attn_write_to_grad(activation: bool) -> Fn:
    def fn(v: ElementView, layer):
        probs = v.fwd("attn.qk_probs", layer)
        g, lg, loc_g = _direction(v, activation)
        if not gate(layer, ATTN, lg, loc_g):
            return torch.zeros_like(probs)
        rows = torch.nonzero(g.any(dim=-1)).flatten()  # as for MLP writes: the nonzero queries
        out = torch.zeros_like(probs)
        out[rows] = probs[rows] * torch.einsum("khd,qd->qkh", v.vo(layer), g[rows])
        return out

    return fn


def _attn_write_to_grad_per_token(v: ElementView, layer):
    g, lg, loc_g = v.direction()
    zo = v.head_write(layer)
    if not gate(layer, ATTN, lg, loc_g):
        return torch.zeros(zo.shape[:2], dtype=zo.dtype, device=zo.device)
    return torch.einsum("qhd,qd->qh", zo, g)


def _attn_write_norm(v: ElementView, layer):
    return v.fwd("attn.qk_probs", layer) * v.vo_norm(layer)[None]


def _attn_write_norm_backward(v: ElementView, layer):
    return v.grad("attn.qk_probs", layer) / v.vo_norm(layer)[None]


def _attn_act_times_grad(v: ElementView, layer):
    return v.fwd("attn.qk_probs", layer) * v.grad("attn.qk_probs", layer)


def _previous_resid(grad: bool) -> Fn:
    def fn(v: ElementView, layer):
        read = v.grad if grad else v.fwd
        return read("resid.post_emb", None) if layer == 0 else read("resid.post_mlp", layer - 1)

    return fn


LATENT_INPUT_LOCATIONS = ("online_mlp_autoencoder_latent", "online_autoencoder_latent")


def _vocab_token_write_to_input_direction(v: ElementView, layer):
    """Each token embedding's read by the neuron (or MLP AE latent) the ablation names, as if the
    MLP's residual input were exactly that embedding (TDB's latent node pages ask for it too)."""
    index = v.fake_grad_index
    if index is None or index.location not in ("mlp.post_act", *LATENT_INPUT_LOCATIONS):
        raise UnsupportedError(
            "vocab_token_write_to_input_direction needs exactly one ablation spec at mlp.post_act "
            "or an MLP autoencoder latent (its index names the neuron or latent)",
            f"{v.path}.ablationSpecs",
        )

    def compute():
        j = index.indices[1]
        normed = v.weights.mlp_input(index.layer, v.weights.W_E)
        if index.location in LATENT_INPUT_LOCATIONS:
            from .autoencoders.dsts import vocab_latent_pre_activations

            return vocab_latent_pre_activations(v, index.layer, j, normed)
        return v.weights.mlp_read_scalar(index.layer, normed, j)

    w = v.cached("vocab_input_direction", compute)
    return w[None].expand(v.T, -1)


def _always_one(v: ElementView, layer):
    return torch.ones(v.T, 1, device=v.weights.W_E.device)


DSTS.update(
    {
        # the TDB node table (§3.3)
        "resid_post_embedding_norm": DstDef(
            False, _norm("resid.post_emb"), points=("resid.post_emb",)
        ),
        "mlp_write_norm": DstDef(
            True,
            lambda v, layer: v.fwd("mlp.post_act", layer) * v.weights.w_out_row_norms[layer],
            points=("mlp.post_act",),
        ),
        "unflattened_attn_write_norm": DstDef(
            True,
            _attn_write_norm,
            _attn_write_norm_backward,
            points=("attn.qk_probs", "attn.v"),
            backward_grad_points=("attn.qk_probs",),
        ),
        "token_attribution": DstDef(
            False,
            lambda v, layer: _dot(v.fwd("resid.post_emb", None), v.grad("resid.post_emb", None)),
            points=("resid.post_emb",),
            grad_points=("resid.post_emb",),
        ),
        "mlp_act_times_grad": DstDef(
            True,
            lambda v, layer: v.fwd("mlp.post_act", layer) * v.grad("mlp.post_act", layer),
            points=("mlp.post_act",),
            grad_points=("mlp.post_act",),
        ),
        "unflattened_attn_act_times_grad": DstDef(
            True, _attn_act_times_grad, points=("attn.qk_probs",), grad_points=("attn.qk_probs",)
        ),
        "resid_post_embedding_proj_to_final_residual_grad": DstDef(
            False,
            _projection("resid.post_emb", END_OF_PREV_LAYER),
            points=("resid.post_emb",),
            direction=True,
        ),
        "mlp_write_to_final_residual_grad": DstDef(
            True, _mlp_write_to_grad(False), points=("mlp.post_act",), direction=True
        ),
        "unflattened_attn_write_to_final_residual_grad": DstDef(
            True, _attn_write_to_grad(False), points=("attn.qk_probs", "attn.v"), direction=True
        ),
        "always_one": DstDef(False, _always_one, _always_one),
        # other attention scalars (§3.4)
        "attn_write_norm": DstDef(
            True,
            lambda v, layer: flatten_pairs(_attn_write_norm(v, layer)),
            points=("attn.qk_probs", "attn.v"),
        ),
        "flattened_attn_post_softmax": DstDef(
            True,
            lambda v, layer: flatten_pairs(v.fwd("attn.qk_probs", layer)),
            points=("attn.qk_probs",),
        ),
        "attn_act_times_grad": DstDef(
            True,
            lambda v, layer: flatten_pairs(_attn_act_times_grad(v, layer)),
            points=("attn.qk_probs",),
            grad_points=("attn.qk_probs",),
        ),
        "attn_write_to_final_residual_grad": DstDef(
            True,
            lambda v, layer: flatten_pairs(_attn_write_to_grad(False)(v, layer)),
            points=("attn.qk_probs", "attn.v"),
            direction=True,
        ),
        "attn_write_norm_per_sequence_token": DstDef(
            True, lambda v, layer: v.head_write(layer).norm(dim=-1), points=("attn.v_out",)
        ),
        "attn_write_to_final_residual_grad_per_sequence_token": DstDef(
            True, _attn_write_to_grad_per_token, points=("attn.v_out",), direction=True
        ),
        "attn_act_times_grad_per_sequence_token": DstDef(
            True,
            lambda v, layer: _attn_act_times_grad(v, layer).sum(dim=1),
            points=("attn.qk_probs",),
            grad_points=("attn.qk_probs",),
        ),
        # layer-level residual scalars (§3.5)
        "resid_post_mlp_norm": DstDef(True, _norm("resid.post_mlp"), points=("resid.post_mlp",)),
        "resid_post_attn_norm": DstDef(True, _norm("resid.post_attn"), points=("resid.post_attn",)),
        "mlp_layer_write_norm": DstDef(True, _norm("resid.delta_mlp"), points=("resid.delta_mlp",)),
        "attn_layer_write_norm": DstDef(
            True, _norm("resid.delta_attn"), points=("resid.delta_attn",)
        ),
        "resid_post_mlp_proj_to_final_residual_grad": DstDef(
            True,
            _projection("resid.post_mlp", RESID_POST_MLP),
            points=("resid.post_mlp",),
            direction=True,
        ),
        "resid_post_attn_proj_to_final_residual_grad": DstDef(
            True,
            _projection("resid.post_attn", RESID_POST_ATTN),
            points=("resid.post_attn",),
            direction=True,
        ),
        "mlp_layer_write_to_final_residual_grad": DstDef(
            True, _projection("resid.delta_mlp", MLP), points=("resid.delta_mlp",), direction=True
        ),
        "attn_layer_write_to_final_residual_grad": DstDef(
            True,
            _projection("resid.delta_attn", ATTN),
            points=("resid.delta_attn",),
            direction=True,
        ),
        # write vectors and helpers (§3.6)
        "attn_weighted_value": DstDef(
            True,
            lambda v, layer: (
                v.fwd("attn.qk_probs", layer)[..., None] * v.fwd("attn.v", layer)[None]
            ),
            points=("attn.qk_probs", "attn.v"),
        ),
        "attn_write": DstDef(
            True,
            lambda v, layer: v.fwd("attn.qk_probs", layer)[..., None] * v.vo(layer)[None],
            points=("attn.qk_probs", "attn.v"),
        ),
        "attn_write_sum_heads": DstDef(
            True,
            lambda v, layer: torch.einsum(
                "qkh,khd->qkd", v.fwd("attn.qk_probs", layer), v.vo(layer)
            ),
            points=("attn.qk_probs", "attn.v"),
        ),
        "mlp_write": DstDef(
            True,
            lambda v, layer: (
                v.fwd("mlp.post_act", layer)[..., None] * v.weights.layers[layer].w_out
            ),
            points=("mlp.post_act",),
        ),
        "resid_delta_mlp_from_mlp_post_act": DstDef(
            True,
            lambda v, layer: v.fwd("mlp.post_act", layer) @ v.weights.layers[layer].w_out,
            points=("mlp.post_act",),
        ),
        "previous_layer_resid_post_mlp": DstDef(
            True,
            _previous_resid(False),
            _previous_resid(True),
            points=("resid.post_emb", "resid.post_mlp"),
            backward_grad_points=("resid.post_emb", "resid.post_mlp"),
        ),
        "mlp_write_to_final_activation_residual_grad": DstDef(
            True, _mlp_write_to_grad(True), points=("mlp.post_act",), activation_direction=True
        ),
        "unflattened_attn_write_to_final_activation_residual_grad": DstDef(
            True,
            _attn_write_to_grad(True),
            points=("attn.qk_probs", "attn.v"),
            activation_direction=True,
        ),
        "resid_post_embedding_proj_to_final_activation_residual_grad": DstDef(
            False,
            _projection("resid.post_emb", END_OF_PREV_LAYER, activation=True),
            points=("resid.post_emb",),
            activation_direction=True,
        ),
        # special (§3.7)
        "vocab_token_write_to_input_direction": DstDef(
            False,
            _vocab_token_write_to_input_direction,
            _vocab_token_write_to_input_direction,
            points=("resid.post_emb",),
        ),
    }
)


def dst_def(name: str, path: str | None = None) -> DstDef:
    if name not in DSTS:
        from .autoencoders.dsts import AE_DSTS  # imports this module: looked up lazily

        if name in AE_DSTS:
            return AE_DSTS[name]
    try:
        return DSTS[name]
    except KeyError:
        raise UnsupportedError(
            f"derived scalar type {name!r} is not supported by this server", path
        ) from None
