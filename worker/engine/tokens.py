"""Nodes seen in vocabulary space: top-token lists from token write and token read vectors
(engine.md §7, protocol.md §5.7 and §5.9).

A node's *write* is what it adds to the residual stream, read out through the unembedding with
the final layer-norm gain (the logit lens), centred over the vocabulary. An MLP neuron's *read* is
the gradient of its pre-activation with respect to its residual input (layer-norm scale held
fixed), read against every token embedding.

Scoring a node against the whole vocabulary is a [d] x [d, V] product, the costliest step of a
TDB request on a CPU. Most nodes are a scalar times a direction that other nodes share (an MLP
neuron writes along its row of W_out at every token and in every sub-request; its read direction
is fixed up to the layer-norm scale), so each distinct direction is scored once per batch and the
node's list is the direction's list scaled by the node's coefficient. A negative coefficient
swaps the direction's top and bottom lists; a zero one gives an all-zero row.

A direction's scores are the same bits in whatever product computes them: every product has at
least SCORING_ROWS rows (zero rows pad it) and at most MAX_SCORING_ROWS; measured on MKL, fewer
rows take other kernels that round differently (one row a matrix-vector product). That lets the
directions of every batch answered together be scored in shared products, each direction once
(`worker.engine.token_lists`, `worker.engine.groups`), each batch still answered as alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.errors import RequestValidationError

from .autoencoders.token_scoring import (
    LATENT_NODE_TYPES,
    latent_read_projections,
    latent_write_projection,
)
from .families.base import ModelWeights
from .topk import Node
from .view import ElementView


@dataclass(frozen=True)
class Projection:
    """A node's token-space vector as `coef` times the scores of a shared direction."""

    key: tuple  # names the direction in every batch (the weights fix it, or its bytes do)
    coef: float
    direction: Callable[[], torch.Tensor]  # the direction in residual space, [d]


def write_projection(view: ElementView, node: Node, path: str | None = None) -> Projection:
    """The node's residual-stream write (forward values, biases excluded), factored (§7.3)."""
    node_type, idx, layer, _ = node
    weights = view.weights
    if node_type == "mlp_neuron":
        t, i = idx[0], idx[-1]
        coef = float(view.fwd("mlp.post_act", layer)[t, i])
        return Projection(("mlp", layer, i), coef, lambda: weights.layers[layer].w_out[i])
    if node_type == "attention_head":
        if len(idx) != 3:
            raise RequestValidationError(
                "token writes of attention heads need (query, key, head) nodes, which the "
                "unflattened attention scalars give; this node list has (token, head) nodes",
                path,
            )
        q, k, h = idx
        coef = float(view.fwd("attn.qk_probs", layer)[q, k, h])
        # keyed by its bytes: the points of a sweep share it below their ablation
        return _by_content(coef, view.vo(layer)[k % view.T, h])
    if node_type == "layer" and layer is None:
        return _by_content(1.0, view.fwd("resid.post_emb", None)[idx[0] % view.T])
    if node_type in LATENT_NODE_TYPES:
        return latent_write_projection(view, node, path)
    raise RequestValidationError(f"nodes of type {node_type} have no token write vector", path)


def _by_content(coef: float, direction: torch.Tensor) -> Projection:
    """A direction that depends on the prompt and ablations (attention values, embeddings): keyed
    by its bytes, so that sub-requests sharing it (a clean run and its ablated twin upstream of
    the ablation) score it once."""
    key = ("content", direction.detach().cpu().float().numpy().tobytes())
    return Projection(key, coef, lambda: direction)


def read_projection(view: ElementView, node: Node) -> Projection:
    """An MLP neuron's read ρ = ∂ψ(N2*(r))/∂r, r = the residual its MLP reads at its token, the
    norm's scale detached (§7.4, families.md §5.1). Ungated: ρ = P(γ2 ⊙ W_in[:, i]) / s2(r) with
    P the LayerNorm centring (none for RMSNorm), so the direction is shared across tokens; gated:
    the gradient of the activation, which depends on the token."""
    if node[0] != "mlp_neuron":
        return latent_read_projections(view, [node])[0]
    _, idx, layer, _ = node
    weights = view.weights
    lw = weights.layers[layer]
    if lw.w_up is not None:
        return _by_content(1.0, _gated_reads(view, [node])[0])
    r = view.fwd(*weights.mlp_residual_key(layer))[idx[0]]
    i = idx[-1]
    scale = weights.norm_scale(r)[0]
    centred = weights.arch.norm == "layer_norm"

    def direction() -> torch.Tensor:
        u = lw.ln2_g * lw.w_in[:, i]
        return u - u.mean() if centred else u

    return Projection(("read", layer, i), float(1.0 / scale), direction)


def read_projections(view: ElementView, nodes: list[Node]) -> list[Projection]:
    """`read_projection` of each node, the gated MLP neurons' and the latents' reads from one
    backward pass per layer (one per node cost more than the small products it differentiates)."""
    weights = view.weights
    gated = [
        n
        for n, node in enumerate(nodes)
        if node[0] == "mlp_neuron" and weights.layers[node[2]].w_up is not None
    ]
    latents = [n for n, node in enumerate(nodes) if node[0] != "mlp_neuron"]
    batched = dict(
        zip(latents, latent_read_projections(view, [nodes[n] for n in latents]), strict=True)
    )
    for n, read in zip(gated, _gated_reads(view, [nodes[n] for n in gated]), strict=True):
        batched[n] = _by_content(1.0, read)
    return [
        batched[n] if n in batched else read_projection(view, node) for n, node in enumerate(nodes)
    ]


def _gated_reads(view: ElementView, nodes: list[Node]) -> list[torch.Tensor]:
    """The reads of gated MLP neurons, one `gated_reads` call per layer."""
    weights = view.weights
    by_layer: dict[int, list[int]] = {}
    for n, node in enumerate(nodes):
        by_layer.setdefault(node[2], []).append(n)
    out: list[torch.Tensor] = [None] * len(nodes)  # type: ignore[list-item]
    for layer, members in by_layer.items():
        rows = torch.tensor([nodes[n][1][0] for n in members], device=weights.W_E.device)
        neurons = torch.tensor([nodes[n][1][-1] for n in members], device=rows.device)
        r = view.fwd(*weights.mlp_residual_key(layer))[rows]
        for n, grad in zip(members, gated_reads(weights, layer, r, neurons), strict=True):
            out[n] = grad
    return out


def gated_reads(
    weights: ModelWeights, layer: int, r: torch.Tensor, neurons: torch.Tensor
) -> torch.Tensor:
    """[n, d]: ρ_j = ∂ψ_{neurons[j]}(N2*(r_j))/∂r_j for residual rows r [n, d] (scale detached),
    in one backward pass: the rows are independent, so the gradient of the sum is each row's."""
    with torch.enable_grad():
        x = r.detach().clone().requires_grad_(True)
        m = weights.mlp_input(layer, x, detach_scale=True)
        (grad,) = torch.autograd.grad(weights.mlp_read_scalars(layer, m, neurons).sum(), x)
    return grad


SCORING_ROWS = 16  # fewer direction rows in one product round differently (MKL's small-M paths)
MAX_SCORING_ROWS = 64  # and no product wider than the shapes measured


def scored_in_blocks(score, weights: ModelWeights, directions: torch.Tensor) -> torch.Tensor:
    """``score(weights, directions)`` in products of SCORING_ROWS to MAX_SCORING_ROWS rows, so
    that a row's bits do not depend on how many directions it is scored with."""
    n = directions.shape[0]
    blocks = []
    for first in range(0, n, MAX_SCORING_ROWS):
        block = directions[first : first + MAX_SCORING_ROWS]
        rows = block.shape[0]
        if rows < SCORING_ROWS:
            block = torch.cat([block, block.new_zeros(SCORING_ROWS - rows, block.shape[1])])
        blocks.append(score(weights, block)[:rows])
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def write_scores(weights: ModelWeights, directions: torch.Tensor) -> torch.Tensor:
    """[n, V]: directions through γ_f ⊙ W_U, each minus its mean over the vocabulary."""
    scores = (directions * weights.lnf_g) @ weights.W_U
    return scores.sub_(scores.mean(dim=-1, keepdim=True))  # in place: [n, V] is tens of MB


def read_scores(weights: ModelWeights, directions: torch.Tensor) -> torch.Tensor:
    """[n, V]: directions against every token embedding (no position, no centring)."""
    return directions @ weights.W_E.T
