"""Nodes seen in vocabulary space: top-token lists, token write and token read vectors
(engine.md §7, protocol.md §5.7 and §5.9).

A node's *write* is what it adds to the residual stream, read out through the unembedding with
the final layer-norm gain (the logit lens), centred over the vocabulary. An MLP neuron's *read* is
the gradient of its pre-activation with respect to its residual input (layer-norm scale held
fixed), read against every token embedding.
"""

from __future__ import annotations

import torch

from models.errors import RequestValidationError

from .derived import ElementView
from .topk import Node, select_indices

EXCLUDED_FILL = float("inf")


def write_vector(view: ElementView, node: Node, path: str | None = None) -> torch.Tensor:
    """The residual-stream write of one node (forward values, biases excluded), shape [d]."""
    node_type, idx, layer, _ = node
    if node_type == "mlp_neuron":
        t, i = idx[0], idx[-1]
        return view.fwd("mlp.post_act", layer)[t, i] * view.weights.layers[layer].w_out[i]
    if node_type == "attention_head":
        if len(idx) != 3:
            raise RequestValidationError(
                "token writes of attention heads need (query, key, head) nodes, which the "
                "unflattened attention scalars give; this node list has (token, head) nodes",
                path,
            )
        q, k, h = idx
        return view.fwd("attn.qk_probs", layer)[q, k, h] * view.vo(layer)[k, h]
    if node_type == "layer" and layer is None:
        return view.fwd("resid.post_emb", None)[idx[0]]
    raise RequestValidationError(f"nodes of type {node_type} have no token write vector", path)


def token_write_scores(
    view: ElementView, nodes: list[Node], path: str | None = None
) -> torch.Tensor:
    """[n, V]: each node's write through γ_f ⊙ W_U, minus its mean over the vocabulary."""
    w = torch.stack([write_vector(view, node, path) for node in nodes])
    scores = (w * view.weights.lnf_g) @ view.weights.W_U
    return scores - scores.mean(dim=-1, keepdim=True)


def token_read_scores(view: ElementView, nodes: list[Node]) -> torch.Tensor:
    """[n, V]: W_E · ∂pre/∂r for MLP neurons, r = resid.post_attn at the node's token (§7.4)."""
    weights = view.weights
    rows = []
    for _, idx, layer, _ in nodes:
        lw = weights.layers[layer]
        r = view.fwd("resid.post_attn", layer)[idx[0]]
        c = r - r.mean()
        scale = torch.sqrt((c * c).mean() + weights.ln_eps)
        u = lw.ln2_g * lw.w_in[:, idx[-1]]
        rows.append((u - u.mean()) / scale)
    return torch.stack(rows) @ weights.W_E.T


def _extremes(scores: torch.Tensor, t: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the t extreme values ordered by value then ascending token id."""
    values, ids = torch.topk(scores, t, dim=1, largest=largest)
    ids, perm = ids.sort(dim=1)
    values = values.gather(1, perm)
    order = values.sort(dim=1, descending=largest, stable=True).indices
    values, ids = values.gather(1, order), ids.gather(1, order)
    threshold = values[:, -1:]
    ragged = (scores == threshold).sum(1) != (values == threshold).sum(1)
    for row in torch.nonzero(ragged).flatten().tolist():
        chosen = select_indices(scores[row], t, largest)
        ids[row], values[row] = chosen, scores[row, chosen]
    return values, ids


def top_tokens(
    scores: torch.Tensor, t: int, excluded: list[int], decode, flip: list[bool] | None = None
) -> list[dict]:
    """TopTokens wire objects for each row of `scores` [n, V] (§5.7)."""
    if excluded:
        ex = torch.tensor(excluded, device=scores.device)
        top_scores = scores.index_fill(1, ex, float("-inf"))
        bottom_scores = scores.index_fill(1, ex, float("inf"))
    else:
        top_scores = bottom_scores = scores
    top_v, top_i = _extremes(top_scores, t, largest=True)
    bot_v, bot_i = _extremes(bottom_scores, t, largest=False)
    if not (torch.isfinite(top_v).all() and torch.isfinite(bot_v).all()):
        raise RequestValidationError(
            f"cannot list {t} finite top tokens: the vocabulary is too small"
        )
    m = torch.maximum(top_v[:, :1].abs(), bot_v[:, :1].abs())
    safe = torch.where(m == 0, torch.ones_like(m), m)
    top_n = torch.where(m == 0, torch.zeros_like(top_v), top_v / safe)
    bot_n = torch.where(m == 0, torch.zeros_like(bot_v), bot_v / safe)
    out = []
    rows = zip(
        top_v.tolist(),
        top_i.tolist(),
        top_n.tolist(),
        bot_v.tolist(),
        bot_i.tolist(),
        bot_n.tolist(),
        strict=True,
    )
    for r, (tv, ti, tn, bv, bi, bn) in enumerate(rows):
        top = [
            {"token": decode(i), "scalar": v, "normalizedScalar": n}
            for v, i, n in zip(tv, ti, tn, strict=True)
        ]
        bottom = [
            {"token": decode(i), "scalar": v, "normalizedScalar": n}
            for v, i, n in zip(bv, bi, bn, strict=True)
        ]
        if flip is not None and flip[r]:
            top, bottom = bottom, top
        out.append({"top": top, "bottom": bottom})
    return out
