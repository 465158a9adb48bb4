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
directions that only the weights fix (an MLP neuron's write and read, a latent's write, or any
direction keyed by its bytes) be scored once for several batches answered together
(``TokenScorer(shared=...)``, `worker.engine.groups`), each batch still answered as alone.
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
from .topk import Node, select_indices
from .view import ElementView


@dataclass(frozen=True)
class Projection:
    """A node's token-space vector as `coef` times the scores of a shared direction."""

    key: tuple  # names the direction; equal keys share one row of scores
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
    reads = dict(zip(gated, _gated_reads(view, [nodes[n] for n in gated]), strict=True))
    latents = [n for n, node in enumerate(nodes) if node[0] != "mlp_neuron"]
    latent_reads = latent_read_projections(view, [nodes[n] for n in latents])
    projections = dict(zip(latents, latent_reads, strict=True))
    return [
        projections[n]
        if n in projections
        else _by_content(1.0, reads[n])
        if n in reads
        else read_projection(view, node)
        for n, node in enumerate(nodes)
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
# direction keys that name the same vector in every batch (the weights fix it, or its bytes do)
SHAREABLE_KEYS = frozenset({"mlp", "read", "content", "ae-write", "ae-read"})


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


def _sorted_extremes(
    scores: torch.Tensor, t: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the t extreme values ordered by value, equal values by ascending token id."""
    width = min(t + 1, scores.shape[1])
    values, ids = torch.topk(scores, width, dim=1, largest=largest)
    if width > t:  # a tie across the boundary: take the smallest ids among the tied values
        for row in torch.nonzero(values[:, t] == values[:, t - 1]).flatten().tolist():
            chosen = select_indices(scores[row], t, largest)
            ids[row, :t], values[row, :t] = chosen, scores[row, chosen]
    values, ids = values[:, :t], ids[:, :t]
    ids, perm = ids.sort(dim=1)
    values = values.gather(1, perm)
    order = values.sort(dim=1, descending=largest, stable=True).indices
    return values.gather(1, order), ids.gather(1, order)


@dataclass
class Extremes:
    """Top and bottom lists of score rows: values [n, t] and token ids [n, t]."""

    top_values: torch.Tensor
    top_ids: torch.Tensor
    bottom_values: torch.Tensor
    bottom_ids: torch.Tensor


def extremes(scores: torch.Tensor, t: int, excluded: torch.Tensor | None) -> Extremes:
    """§5.7 steps 1-2 on score rows (which are overwritten: excluded columns become ±inf)."""
    if excluded is not None:
        scores[:, excluded] = float("-inf")
    top_values, top_ids = _sorted_extremes(scores, t, largest=True)
    if excluded is not None:
        scores[:, excluded] = float("inf")
    bottom_values, bottom_ids = _sorted_extremes(scores, t, largest=False)
    if not (torch.isfinite(top_values).all() and torch.isfinite(bottom_values).all()):
        raise RequestValidationError(
            f"cannot list {t} finite top tokens: the vocabulary is too small"
        )
    return Extremes(top_values, top_ids, bottom_values, bottom_ids)


class TokenScorer:
    """Top-token lists for the nodes of one batch, scoring each distinct direction once."""

    def __init__(
        self,
        weights: ModelWeights,
        excluded: list[int],
        decode: Callable[[int], str],
        shared: dict | None = None,
    ):
        """``shared``: the scored rows of SHAREABLE_KEYS directions, kept across the scorers of
        batches answered together (their bits do not depend on the batch that scored them)."""
        self.weights = weights
        self.decode = decode
        self.excluded = torch.tensor(excluded, device=weights.W_E.device) if excluded else None
        self._rows: dict[tuple, tuple[Extremes, int]] = {}  # (kind, t, key) -> (extremes, row)
        self._shared: dict[tuple, tuple[Extremes, int]] = {} if shared is None else shared
        self._zero_rows: dict[int, torch.Tensor] = {}

    def top_tokens(
        self, projections: list[Projection], kind: str, t: int, flip: list[bool] | None = None
    ) -> list[dict]:
        """TopTokens wire objects, one per projection (`kind` is "write" or "read")."""
        self._score_new_directions(projections, kind, t)
        lists = [self._node_lists(p, kind, t) for p in projections]
        return [
            self._wire(values, ids, flip is not None and flip[n])
            for n, (values, ids) in enumerate(lists)
        ]

    def top_tokens_of_scores(self, scores: torch.Tensor, t: int) -> dict:
        """TopTokens of one given score row [V] (no factoring: e.g. vocab_token_write_to_input_direction)."""
        ex = extremes(scores[None].clone(), t, self.excluded)
        values = torch.stack([ex.top_values[0], ex.bottom_values[0]])
        ids = torch.stack([ex.top_ids[0], ex.bottom_ids[0]])
        return self._wire(values, ids, False)

    def _table(self, key: tuple) -> dict[tuple, tuple[Extremes, int]]:
        return self._shared if key[0] in SHAREABLE_KEYS else self._rows

    def _score_new_directions(self, projections: list[Projection], kind: str, t: int) -> None:
        new = {}
        for p in projections:
            if p.coef != 0 and (kind, t, p.key) not in self._table(p.key):
                new.setdefault(p.key, p.direction)
        if not new:
            return
        directions = torch.stack([direction() for direction in new.values()])
        score = write_scores if kind == "write" else read_scores
        ex = extremes(scored_in_blocks(score, self.weights, directions), t, self.excluded)
        for row, key in enumerate(new):
            self._table(key)[(kind, t, key)] = (ex, row)

    def _node_lists(self, p: Projection, kind: str, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[2, t] values and ids (top row, bottom row) of one node."""
        if p.coef == 0:
            ids = self._zero_row_ids(t)
            return torch.zeros(2, t, device=ids.device), torch.stack([ids, ids])
        ex, row = self._table(p.key)[(kind, t, p.key)]
        top = (ex.top_values[row], ex.top_ids[row])
        bottom = (ex.bottom_values[row], ex.bottom_ids[row])
        if p.coef < 0:
            top, bottom = bottom, top
        coef = torch.tensor(p.coef, dtype=top[0].dtype, device=top[0].device)
        return torch.stack([coef * top[0], coef * bottom[0]]), torch.stack([top[1], bottom[1]])

    def _zero_row_ids(self, t: int) -> torch.Tensor:
        """An all-zero row ties everywhere: the t smallest ids that are not excluded (cached:
        inactive latents make many zero rows)."""
        if t not in self._zero_rows:
            self._zero_rows[t] = self._first_allowed_ids(t)
        return self._zero_rows[t]

    def _first_allowed_ids(self, t: int) -> torch.Tensor:
        allowed = torch.ones(
            self.weights.W_E.shape[0], dtype=torch.bool, device=self.weights.W_E.device
        )
        if self.excluded is not None:
            allowed[self.excluded] = False
        return torch.nonzero(allowed).flatten()[:t]

    def _wire(self, values: torch.Tensor, ids: torch.Tensor, flip: bool) -> dict:
        """§5.7 steps 4-6: normalise by the larger first magnitude, decode, maybe swap."""
        m = torch.maximum(values[0, 0].abs(), values[1, 0].abs())
        normalized = torch.zeros_like(values) if m == 0 else values / m
        top, bottom = (
            [
                {"token": self.decode(i), "scalar": v, "normalizedScalar": n}
                for v, i, n in zip(vs, is_, ns, strict=True)
            ]
            for vs, is_, ns in zip(values.tolist(), ids.tolist(), normalized.tolist(), strict=True)
        )
        return {"top": bottom, "bottom": top} if flip else {"top": top, "bottom": bottom}
