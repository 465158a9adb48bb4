"""actq's own page of a node's record, and links to it from the comparison page's node rows.

``/records/DST/LAYER/INDEX?model=`` shows what a node does over the corpus of the newest record
set that has it: its largest activation, the explanation people attached, and its top sequences
with each token shaded by its activation. ``record_link(node, model, label)`` (a template global)
is the node's label, linked to that page when a record exists."""

from __future__ import annotations

from flask import Blueprint, Flask, g, render_template, request
from markupsafe import Markup, escape

from api.database import get_session
from api.served import served_models
from models.errors import NotFoundError
from models.store.node_records import dataset_name, explanations_of, find_record
from models.store.record_lookup import record_text

bp = Blueprint("record_pages", __name__)
NODE_DSTS = {"mlp_neuron": "mlp_post_act", "attention_head": "attn_write_norm"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_global(record_link)


def _node_address(node: dict) -> tuple[str, int, int] | None:
    dst = NODE_DSTS.get(node.get("nodeType"))
    indices = node.get("tensorIndices") or []
    if dst is None or node.get("layerIndex") is None or not indices:
        return None
    if not isinstance(indices[-1], int):
        return None
    return dst, node["layerIndex"], indices[-1]


def record_link(node: dict, model: str, label: str) -> Markup:
    address = _node_address(node or {})
    if address is None:
        return escape(label)
    known = g.setdefault("actq_records_seen", {})
    key = (model, *address)
    if key not in known:
        known[key] = find_record(get_session(), [dataset_name(model)], *address) is not None
    if not known[key]:
        return escape(label)
    dst, layer, index = address
    href = f"/records/{dst}/{layer}/{index}?model={escape(model)}"
    return Markup(f'<a href="{href}" title="this node\'s record">{escape(label)}</a>')


@bp.get("/records/<dst>/<int:layer>/<int:index>")
def record_page(dst: str, layer: int, index: int):
    model = request.args.get("model") or served_models().get(None).meta.name
    session = get_session()
    found = find_record(session, [dataset_name(model)], dst, layer, index)
    if found is None:
        raise NotFoundError(f"no record of {dst} {layer}:{index} for {model}")
    record_set, record = found
    top, _random = record_text(served_models().get(None).tokenizer, record)
    peak = record.max_activation or 1.0
    sequences = [
        [(t, a, max(0.0, min(1.0, a / peak))) for t, a in zip(*_per_token(dst, s), strict=True)]
        for s in top
    ]
    return render_template(
        "record.html",
        dst=dst,
        layer=layer,
        index=index,
        model=model,
        record_set=record_set,
        record=record,
        sequences=sequences,
        explanations=explanations_of(session, {model}, dst, layer, index),
    )


def _per_token(dst: str, sequence: tuple[list[str], list[float]]) -> tuple[list[str], list[float]]:
    """One value per token: a head's largest write into each token (its row of token pairs)."""
    tokens, acts = sequence
    if dst != "attn_write_norm":
        return tokens, acts
    rows, start = [], 0
    for i in range(len(tokens)):
        rows.append(max(acts[start : start + i + 1]))
        start += i + 1
    return tokens, rows
