"""What a request will cost, estimated from its shape before it is queued (DESIGN.md, "Cost bounds").

Each limit on its own (``ACTQ_MAX_TOP_K``, ``ACTQ_MAX_SUB_REQUESTS``, ...) lets through requests
whose costs multiply: eight 127-token TDB sub-requests with a node table of 5000 took a worker
past 12 GB. The estimate multiplies them again, from the request alone and the model's sizes:

* **response bytes**: the JSON the worker writes. A top-k spec selects about
  ``2 k x (DSTs of its largest group) x sqrt(groups)`` nodes (top and bottom per DST, unions
  across groups overlap), each written as a node index and one float per group, plus
  intermediate sums of ``tokens x layers`` floats per DST; a scored-tokens spec writes
  ``2 numTokens`` tokens per node of the spec it depends on, a token-pair spec
  ``numTokensAttendedTo`` pairs per node.
* **worker peak memory** (beyond the loaded model): the forward and backward activations of
  the padded batch (per layer: residual-sized tensors, the MLP's hidden units and the attention
  pattern), the vocabulary projections of the scored nodes (``nodes x vocabulary`` floats per
  scored-tokens spec), and the response itself as Python objects and as text.

The per-item byte counts are measured averages of actq's own JSON (``benchmarks/cost.py``
checks the estimate against measured responses and peaks for ten shapes; README, "Operations").
Each term remembers the request field that drives it, so a refusal names that field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from models.errors import RequestValidationError
from models.wire.protocol import (
    BatchedRequest,
    BatchedTdbRequest,
    MultipleTopKDerivedScalarsRequestSpec,
    ScoredTokensRequestSpec,
    TokenPairAttributionRequestSpec,
    WireModel,
)
from models.wire.tdb import convert_tdb_request

NODE_INDEX_BYTES = 100  # {"nodeType": "mlp_neuron", "tensorIndices": [51, 2596], ...}
FLOAT_BYTES = 20  # a float32 written with repr's 17 digits
SCORED_TOKEN_BYTES = 90  # {"token": " cat", "scalar": ..., "normalizedScalar": ...}
PAIR_BYTES = 24  # one token index and one attribution
PYTHON_PER_JSON_BYTE = 3  # the response as dicts, lists and floats, per byte of its JSON
ACTIVATION_COPIES = 6  # residual-sized tensors kept per layer, forward and backward
FLOAT32 = 4
FIXED_UNEMBEDDING_COPIES = 2
PROJECTION_COPIES = 1.25  # a scored node's vocabulary projection, with its top-k workspace
# Share of a node table's nodes that each kind of token scoring applies to.
SCORED_SHARE = {"upvoted_output_tokens": 1.0}
OTHER_SCORED_SHARE = 0.5  # MLP-input or attention-input scorings: MLP or attention nodes only
SINGLE_SPEC_FIELDS = {  # route: (spec attribute, its wire name)
    "derived_scalars": ("derived_scalars_request_spec", "derivedScalarsRequestSpec"),
    "derived_attention_scalars": (
        "derived_attention_scalars_request_spec",
        "derivedAttentionScalarsRequestSpec",
    ),
    "multiple_top_k_derived_scalars": (
        "multiple_top_k_derived_scalars_request_spec",
        "multipleTopKDerivedScalarsRequestSpec",
    ),
}


@dataclass(frozen=True)
class Term:
    """One part of a cost and the request field that drives it."""

    response_bytes: float
    memory_bytes: float
    path: str


@dataclass(frozen=True)
class Cost:
    response_bytes: int
    memory_bytes: int
    response_driver: str  # the field whose term writes the most bytes
    memory_driver: str


@dataclass(frozen=True)
class _Sub:
    tokens: int
    specs: tuple[tuple[str, WireModel, str], ...]  # (name, spec, path of the field that sizes it)
    path: str  # where the sub-request is, for its activations' term


def estimate_cost(endpoint: str, request: WireModel, meta: Any, tokenizer: Any) -> Cost:
    """The response bytes and worker peak memory of ``request`` (parsed) on the model ``meta``."""
    subs = list(_sub_requests(endpoint, request, tokenizer))
    if not subs:
        return Cost(0, 0, "", "")
    activations = _activations(subs, meta)
    per_sub = [_spec_terms(sub, meta) for sub in subs]
    terms = [activations] + [t for ts in per_sub for t in ts]
    response = sum(t.response_bytes for t in terms)
    # Sub-requests are processed one after another: the largest one's projections count.
    projections = max(per_sub, key=lambda ts: sum(t.memory_bytes for t in ts))
    memory = (
        _fixed_bytes(meta)
        + activations.memory_bytes
        + sum(t.memory_bytes for t in projections)
        + response * (1 + PYTHON_PER_JSON_BYTE)
    )
    by_response = max(terms, key=lambda t: t.response_bytes)
    by_memory = max(terms, key=lambda t: t.memory_bytes + t.response_bytes * PYTHON_PER_JSON_BYTE)
    return Cost(int(response), int(memory), by_response.path, by_memory.path)


def _fixed_bytes(meta: Any) -> float:
    """What any job allocates: the unembedding in the layouts the vocabulary projections use."""
    return FIXED_UNEMBEDDING_COPIES * meta.vocab_size * meta.d_model * FLOAT32


def check_cost(cost: Cost, max_response_bytes: int, max_memory_bytes: int) -> None:
    """A 422 naming the driving field when ``cost`` is over a limit."""
    if cost.response_bytes > max_response_bytes:
        raise RequestValidationError(
            f"the response is estimated at {_mb(cost.response_bytes)}; the limit is "
            f"{_mb(max_response_bytes)} (ACTQ_MAX_RESPONSE_BYTES): this field drives it",
            cost.response_driver or None,
        )
    if cost.memory_bytes > max_memory_bytes:
        raise RequestValidationError(
            f"the job is estimated to need {_mb(cost.memory_bytes)} of worker memory; the limit "
            f"is {_mb(max_memory_bytes)} (ACTQ_MAX_JOB_MEMORY_BYTES): this field drives it",
            cost.memory_driver or None,
        )


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _sub_requests(endpoint: str, request: WireModel, tokenizer: Any) -> Iterable[_Sub]:
    if isinstance(request, BatchedTdbRequest):
        for i, spec in enumerate(request.sub_requests):
            path = f"subRequests.{i}"
            sub = convert_tdb_request(spec, path)
            sized = f"{path}.topAndBottomKForNodeTable"
            specs = tuple((n, s, sized) for n, s in sub.processing_request_spec_by_name.items())
            yield _Sub(len(tokenizer.encode(spec.prompt)), specs, f"{path}.prompt")
    elif isinstance(request, BatchedRequest):
        for i, sub in enumerate(request.inference_sub_requests):
            path = f"inferenceSubRequests.{i}"
            specs = tuple(
                (name, spec, f"{path}.processingRequestSpecByName.{name}")
                for name, spec in sub.processing_request_spec_by_name.items()
            )
            prompt = sub.inference_request_spec.prompt
            yield _Sub(len(tokenizer.encode(prompt)), specs, f"{path}.inferenceRequestSpec.prompt")
    elif endpoint in SINGLE_SPEC_FIELDS:
        attribute, field = SINGLE_SPEC_FIELDS[endpoint]
        spec = getattr(request, attribute)
        prompt = request.inference_request_spec.prompt
        yield _Sub(len(tokenizer.encode(prompt)), ((field, spec, field),), "inferenceRequestSpec")


def _activations(subs: list[_Sub], meta: Any) -> Term:
    """The padded batch's forward and backward activations (the longest prompt pads the rest)."""
    longest = max(subs, key=lambda s: s.tokens)
    n, rows = longest.tokens, len(subs)
    per_layer = ACTIVATION_COPIES * (meta.d_model * n + meta.d_mlp * n + meta.n_heads * n * n)
    per_layer_bytes = per_layer * FLOAT32 * rows
    logits = 2 * rows * n * meta.vocab_size * FLOAT32
    path = "subRequests" if rows > 1 and longest.path.startswith("subRequests") else longest.path
    return Term(0.0, meta.n_layers * per_layer_bytes + logits, path)


def _spec_terms(sub: _Sub, meta: Any) -> list[Term]:
    nodes: dict[str, float] = {}
    terms = []
    for name, spec, path in sub.specs:
        if isinstance(spec, MultipleTopKDerivedScalarsRequestSpec):
            count, term = _top_k_term(spec, sub.tokens, meta, _field(path, "topAndBottomK"))
            nodes[name] = count
            terms.append(term)
        elif isinstance(spec, ScoredTokensRequestSpec):
            count = nodes.get(spec.depends_on_spec_name, 0.0)
            share = SCORED_SHARE.get(_value(spec.token_scoring_type), OTHER_SCORED_SHARE)
            scored = share * 2 * spec.num_tokens * SCORED_TOKEN_BYTES
            written = count * (NODE_INDEX_BYTES + scored)
            projections = count * meta.vocab_size * FLOAT32 * PROJECTION_COPIES
            terms.append(
                Term(written, projections if share == 1.0 else 0.0, _field(path, "numTokens"))
            )
        elif isinstance(spec, TokenPairAttributionRequestSpec):
            count = nodes.get(spec.depends_on_spec_name, 0.0)
            written = count * (NODE_INDEX_BYTES + spec.num_tokens_attended_to * PAIR_BYTES)
            terms.append(Term(written, 0.0, _field(path, "numTokensAttendedTo")))
        else:  # derived (attention) scalars: one value per token (pair) of one layer
            values = sub.tokens * max(sub.tokens, meta.d_mlp)
            terms.append(Term(values * FLOAT_BYTES, values * FLOAT32, path))
    return terms


def _top_k_term(spec, tokens: int, meta: Any, path: str) -> tuple[float, Term]:
    groups = spec.dst_list_by_group_id
    widest = max((len(dsts) for dsts in groups.values()), default=0)
    every_node = tokens * meta.n_layers * (meta.d_mlp + tokens * meta.n_heads) + tokens
    k = spec.top_and_bottom_k
    selected = every_node if k is None else 2 * k * widest * math.sqrt(max(1, len(groups)))
    count = min(float(every_node), selected)
    dsts = sum(len(d) for d in groups.values())
    sums = dsts * tokens * (meta.n_layers + 1) * FLOAT_BYTES
    written = count * (NODE_INDEX_BYTES + len(groups) * FLOAT_BYTES) + sums
    return count, Term(written, count * NODE_INDEX_BYTES, path)


def _value(enum: Any) -> str:
    return str(getattr(enum, "value", enum))


def _field(path: str, name: str) -> str:
    """The path of the field that sizes a spec: TDB's own field stays as it is."""
    return path if path.endswith("topAndBottomKForNodeTable") else f"{path}.{name}"
