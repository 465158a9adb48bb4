"""A node's record as TDB's routes ask for it (``NodeIdAndDatasets``), and its sequences as text.

Shared by the API (the read routes, the check at submission) and the worker (normalising a
response by a record), so that both resolve a dataset name the same way."""

from __future__ import annotations

from sqlalchemy.orm import Session

from models.errors import NotFoundError
from models.store.node_records import Sequence, decode_record, find_record
from models.store.tables import NodeRecord, RecordSet


def record_for(session: Session, node, path: str | None = None) -> tuple[RecordSet, NodeRecord]:
    """The record of ``node`` (``NodeIdAndDatasets``), or a 404 saying where it was looked for."""
    dst = getattr(node.dst, "value", node.dst)
    found = find_record(session, list(node.datasets), dst, node.layer_index, node.activation_index)
    if found is None:
        raise NotFoundError(
            f"no record of {dst} {node.layer_index}:{node.activation_index} in {list(node.datasets)}"
            " (build records with `actq records build CORPUS`)",
            path=path,
        )
    return found


def as_text(tokenizer, sequences: list[Sequence]) -> list[tuple[list[str], list[float]]]:
    return [(tokenizer.decode_tokens(s.tokens), s.activations) for s in sequences]


def record_text(tokenizer, record: NodeRecord):
    """(top, random) sequences of the record, each as (token strings, activations)."""
    top, random = decode_record(record.data)
    return as_text(tokenizer, top), as_text(tokenizer, random)


# The two routes whose spec may ask for normalisation by a record: (spec field, response field).
NORMALIZED_ROUTES = {
    "derived_scalars": ("derivedScalarsRequestSpec", "derivedScalarsResponseData"),
    "derived_attention_scalars": (
        "derivedAttentionScalarsRequestSpec",
        "derivedAttentionScalarsResponseData",
    ),
}


def normalization_node(endpoint: str, request: dict | None):
    """(``NodeIdAndDatasets``, its field path) if the request asks to normalise by a record."""
    from models.wire.specs import NodeIdAndDatasets

    fields = NORMALIZED_ROUTES.get(endpoint)
    if fields is None or not isinstance(request, dict):
        return None
    node = (request.get(fields[0]) or {}).get("normalizeActivationsUsingNeuronRecord")
    if node is None:
        return None
    path = f"{fields[0]}.normalizeActivationsUsingNeuronRecord"
    return NodeIdAndDatasets.model_validate(node), path


def require_record(session: Session, endpoint: str, request: dict | None) -> None:
    """A 404 now, at submission, if the request normalises by a record that does not exist."""
    asked = normalization_node(endpoint, request)
    if asked is not None:
        record_for(session, *asked)
