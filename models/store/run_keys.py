"""Short text keys for the ablations of a run, so "runs ablating this node" is an indexed lookup.

A run's ablations are stored as canonical JSON (``models.store.runs.canonical_ablations``); each ablated
thing also gets a key in ``run_ablations``. A TDB node ablation (``nodeAblations``) is keyed by
what the server actually overwrites (protocol.md §6.1): node type, layer, and the node's tensor
indices, where an attention head's middle (key) index is written ``*`` because TDB ignores it and
overwrites the head's whole attention row. The node's ``passType`` is ignored too (ablations are
always forward). So ``attention_head:1:14,*,0`` is head 0 of layer 1 at query token 14, and
``mlp_neuron:0:2,173`` neuron 173 of layer 0 at token 2. An activation ablation of the batched
routes (``ablationSpecs``) is keyed as ``LOCATION:LAYER:INDICES:PASS``, e.g.
``mlp.post_act:0:2,173:forward``. A missing layer is ``-``, a null index ``*``.

``parse_key`` accepts either form, or a node index as JSON, and returns the key in normal form.
"""

from __future__ import annotations

import json
from typing import Any

from models.errors import RequestValidationError

MAX_KEY_CHARS = 300
# Node types whose ablation ignores every tensor index but the first and the last (§6.1).
FIRST_AND_LAST_ONLY = frozenset({"attention_head"})


def _index_text(value: Any) -> str:
    return "*" if value is None else str(value)


def _layer_text(layer: Any) -> str:
    return "-" if layer is None else str(layer)


def node_key(node: dict[str, Any]) -> str:
    """The key of a node ablation's ``nodeIndex`` (a MirroredNodeIndex in wire form)."""
    indices = list(node.get("tensorIndices") or [])
    if node.get("nodeType") in FIRST_AND_LAST_ONLY and len(indices) > 2:
        indices = [indices[0], *([None] * (len(indices) - 2)), indices[-1]]
    text = ",".join(_index_text(i) for i in indices)
    return f"{node.get('nodeType')}:{_layer_text(node.get('layerIndex'))}:{text}"


def activation_key(index: dict[str, Any]) -> str:
    """The key of an AblationSpec's ``index`` (a MirroredActivationIndex in wire form)."""
    text = ",".join(_index_text(i) for i in index.get("tensorIndices") or [])
    layer = _layer_text(index.get("layerIndex"))
    return (
        f"{index.get('activationLocationType')}:{layer}:{text}:{index.get('passType', 'forward')}"
    )


def ablation_key(ablation: dict[str, Any]) -> str:
    """The key of one ablation, either a NodeAblation or an AblationSpec."""
    if "nodeIndex" in ablation:
        return node_key(ablation["nodeIndex"] or {})
    return activation_key(ablation.get("index") or {})


def ablation_keys(canonical: str | None) -> list[str]:
    """Distinct keys of a run's ablations (canonical JSON list), sorted."""
    items = json.loads(canonical) if canonical else []
    return sorted({ablation_key(item)[:MAX_KEY_CHARS] for item in items or []})


def _normal_index(text: str) -> str:
    text = text.strip()
    if text in ("*", "null", "None", ""):
        return "*"
    if text == "All":
        return text
    try:
        return str(int(text))
    except ValueError:
        raise RequestValidationError(f"bad tensor index {text!r} in an ablation key") from None


def parse_key(text: str, path: str = "ablates") -> str:
    """A user's node or activation key (or node index as JSON) in the normal form stored."""
    text = text.strip()
    if text.startswith("{"):
        try:
            node = json.loads(text)
        except json.JSONDecodeError:
            raise RequestValidationError("not a JSON node index", path) from None
        if not isinstance(node, dict):
            raise RequestValidationError("expected a JSON object (a node index)", path)
        return ablation_key(node) if "nodeIndex" in node or "index" in node else node_key(node)
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        message = "expected TYPE:LAYER:I,J[,K] (e.g. attention_head:1:14,0,0) or a JSON node index"
        raise RequestValidationError(message, path)
    layer = parts[1].strip()
    if layer not in ("-", "", "null", "None"):
        try:
            layer = str(int(layer))
        except ValueError:
            raise RequestValidationError(f"bad layer {layer!r} in an ablation key", path) from None
    else:
        layer = "-"
    indices = [_normal_index(i) for i in parts[2].split(",")] if parts[2].strip() else []
    if len(parts) == 4:
        text = ",".join(indices)
        return f"{parts[0]}:{layer}:{text}:{parts[3].strip() or 'forward'}"
    values = [None if i == "*" else int(i) if i.lstrip("-").isdigit() else i for i in indices]
    return node_key(
        {
            "nodeType": parts[0],
            "layerIndex": None if layer == "-" else int(layer),
            "tensorIndices": values,
        }
    )
