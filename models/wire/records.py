"""TDB's read routes on the wire: their requests, and the normalised token scalars they answer with.

``/neuron_record`` answers a neuron's top and random sequences, each token with its activation and
that activation scaled to [0, 1] by the largest (floored at 0) of all the record's tokens;
``/attention_head_record`` answers token pairs: per token the scalars it reads from each earlier
token and itself, their sum and maximum ("in"), the sum and maximum of what later tokens read from
it ("out"), each scaled the same way across the whole record. ``normalizeActivationsUsingNeuronRecord``
scales a prompt's values by a record's largest ones. The rules are TDB's (its ``read_routes.py``):
the scale is ``max(x / (largest - 1e-5), 0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from models.wire.base import Int, Str, WireModel
from models.wire.enums import DerivedScalarType
from models.wire.specs import NodeIdAndDatasets

__all__ = [
    "ExistingExplanationsRequest",
    "NodeIdAndDatasets",
    "ScoreRequest",
    "attention_token_scalars",
    "token_scalars",
]

TokenScalars = list[tuple[str, float]]  # one sequence: (token, activation) per token
PairScalars = list[tuple[str, list[float]]]  # one sequence: (token, scalars read) per token


class ExistingExplanationsRequest(WireModel):
    dst: DerivedScalarType
    layer_index: Int
    activation_index: Int
    explanation_datasets: list[Str]
    neuron_dataset: Str | None = None


class ScoreRequest(NodeIdAndDatasets):
    explanation: Str
    max_sequences: Int | None = None


def linear_scale(largest: float) -> Callable[[float], float]:
    return lambda x: max(x / (largest - 1e-5), 0.0)


def _largest(values) -> float:
    return max((max(v, 0.0) for v in values), default=0.0) or 0.0


def token_scalars(groups: list[list[TokenScalars]]) -> list[list[list[dict]]]:
    """Groups (top, random) of sequences of (token, scalar) -> TDB's ``TokenAndScalar`` lists."""
    scale = linear_scale(_largest(s for group in groups for seq in group for _, s in seq))
    return [
        [[{"token": t, "scalar": s, "normalizedScalar": scale(s)} for t, s in seq] for seq in group]
        for group in groups
    ]


def pairs_by_token(tokens: Sequence[str], flat: Sequence[float]) -> PairScalars:
    """A record's flattened token pairs (row by row over the causal triangle) per query token."""
    out, start = [], 0
    for i, token in enumerate(tokens):
        out.append((token, list(flat[start : start + i + 1])))
        start += i + 1
    return out


def _summaries(seq: PairScalars) -> dict[str, list[float]]:
    scalars = [s for _, s in seq]
    outs = [[row[j] for row in scalars[j:] if j < len(row)] for j in range(len(scalars))]
    return {
        "totalScalarIn": [sum(row) for row in scalars],
        "maxScalarIn": [max(row) for row in scalars],
        "totalScalarOut": [sum(col) for col in outs],
        "maxScalarOut": [max(col) for col in outs],
    }


def attention_token_scalars(groups: list[list[PairScalars]]) -> list[list[list[dict]]]:
    """Groups of sequences of (token, scalars in) -> TDB's ``TokenAndAttentionScalars`` lists."""
    sequences = [seq for group in groups for seq in group]
    every = linear_scale(_largest(a for seq in sequences for _, row in seq for a in row))
    summaries = [_summaries(seq) for seq in sequences]
    scales = {
        name: linear_scale(_largest(v for summary in summaries for v in summary[name]))
        for name in ("totalScalarIn", "maxScalarIn", "totalScalarOut", "maxScalarOut")
    }
    flat = iter(summaries)
    answer = []
    for group in groups:
        answer.append([_attention_sequence(seq, next(flat), every, scales) for seq in group])
    return answer


def _attention_sequence(seq: PairScalars, summary: dict, every, scales) -> list[dict]:
    rows = []
    for i, (token, scalars) in enumerate(seq):
        row = {"token": token, "scalars": scalars, "normalizedScalars": [every(a) for a in scalars]}
        for name in ("totalScalarIn", "maxScalarIn", "totalScalarOut", "maxScalarOut"):
            value = summary[name][i]
            row[name] = value
            row["normalized" + name[0].upper() + name[1:]] = scales[name](value)
        rows.append(row)
    return rows


def normalized_activations(activations: Sequence[float], max_activation: float) -> list[float]:
    """``normalizeActivationsUsingNeuronRecord`` for a neuron: ``max(a, 0) / record maximum``."""
    if max_activation <= 0:
        return [0.0 for _ in activations]
    return [max(a, 0.0) / max_activation for a in activations]
