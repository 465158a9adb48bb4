"""The numeric parts of a comparison of two runs: node tables, top output tokens, per-token sums.

Pure functions of two runs' response data in wire form. Every compared number is a ``cell``:
``{"a": value in a, "b": value in b, "delta": b - a}``, where a value is ``None`` when that run
does not have it and the delta is then ``None`` too, never a made-up zero.

Nodes are matched by ``(nodeType, tensorIndices, layerIndex, passType)`` (protocol.md
Appendix C). Runs of one batch share their node lists (TDB unions them, §5.5.4); runs of
different jobs do not, and a node in one run's top-k only is reported as absent from the other.
"""

from __future__ import annotations

from typing import Any

from models.errors import RequestValidationError

# protocol.md §6.4: topOutputTokenLogits lists each run's 100 largest and 100 smallest logits.
TOP_OUTPUT_TOKENS = 100
# Display order of TDB's component groups (§6.5) and of the layer kinds in each; others follow.
GROUP_ORDER = ("write_norm", "act_times_grad", "direction_write", "activation")
KIND_ORDER = ("embedding", "mlp", "attention")
NodeKey = tuple


def _ordered(names: list[str], order: tuple[str, ...]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: rank.get(n, len(order)))


def cell(a: float | None, b: float | None) -> dict[str, float | None]:
    return {"a": a, "b": b, "delta": None if a is None or b is None else b - a}


def node_key(node: dict[str, Any]) -> NodeKey:
    return (
        node.get("nodeType"),
        tuple(node.get("tensorIndices") or ()),
        node.get("layerIndex"),
        node.get("passType"),
    )


def _union(*lists) -> list:
    seen: dict = {}
    for items in lists:
        for item in items:
            seen.setdefault(item, None)
    return list(seen)


def _token(tokens: list[str], position: Any) -> str:
    if isinstance(position, int) and -len(tokens) <= position < len(tokens):
        return f" {tokens[position]!r}"
    return ""


_LATENT_PREFIX = {
    "mlp_autoencoder_latent": "MLP-AE",
    "attention_autoencoder_latent": "attn-AE",
    "autoencoder_latent": "AE",
}


def node_label(node: dict[str, Any], tokens: list[str]) -> str:
    """A short human name: ``attn L1 H0 @14 ' Germany' <- 0 'Paris'``, ``MLP L0 n173 @2 ' the'``."""
    kind = node.get("nodeType")
    idx = list(node.get("tensorIndices") or [])
    layer = node.get("layerIndex")
    first = idx[0] if idx else None
    if kind == "layer":
        return f"embedding @{first}{_token(tokens, first)}"
    if kind == "mlp_neuron" and len(idx) >= 2:
        return f"MLP L{layer} n{idx[-1]} @{first}{_token(tokens, first)}"
    if kind == "attention_head" and len(idx) >= 3:
        key = idx[1]
        return f"attn L{layer} H{idx[-1]} @{first}{_token(tokens, first)} <- {key}{_token(tokens, key)}"
    if kind in _LATENT_PREFIX and len(idx) >= 2:  # e.g. MLP-AE L1 #126 @14 ' France'
        return f"{_LATENT_PREFIX[kind]} L{layer} #{idx[-1]} @{first}{_token(tokens, first)}"
    if kind == "vocab_token" and idx:
        return f"token {idx[-1]} @{first}"
    return f"{kind} L{layer} {idx}"


# --- node tables ----------------------------------------------------------------------------


def _indexed(data: dict[str, Any] | None) -> tuple[list[str], dict[NodeKey, tuple[dict, dict]]]:
    """(group ids, node key -> (node, {group: value})) of one multiple-top-k response data."""
    if not data:
        return [], {}
    by_group = data.get("activationsByGroupId") or {}
    rows: dict[NodeKey, tuple[dict, dict]] = {}
    for i, node in enumerate(data.get("nodeIndices") or []):
        values = {g: v[i] for g, v in by_group.items() if i < len(v)}
        rows.setdefault(node_key(node), (node, values))
    return list(by_group), rows


def _row(a, b, groups: list[str], tokens: list[str]) -> dict[str, Any]:
    node = (a or b)[0]
    in_a, in_b = a[1] if a else {}, b[1] if b else {}
    values = {g: cell(in_a.get(g), in_b.get(g)) for g in groups}
    deltas = [abs(c["delta"]) for c in values.values() if c["delta"] is not None]
    return {
        "node": node,
        "label": node_label(node, tokens),
        "inA": a is not None,
        "inB": b is not None,
        "values": values,
        "maxAbsDelta": max(deltas) if deltas else None,
    }


def _sort_key(group: str | None):
    """Largest |delta| first (in ``group``, or in any group); rows without a delta last."""

    def key(row: dict[str, Any]) -> tuple[int, float]:
        cells = [row["values"][group]] if group else list(row["values"].values())
        deltas = [abs(c["delta"]) for c in cells if c["delta"] is not None]
        if deltas:
            return 0, -max(deltas)
        present = [abs(v) for c in cells for v in (c["a"], c["b"]) if v is not None]
        return 1, -max(present, default=0.0)

    return key


def node_table(
    name: str, data_a: dict | None, data_b: dict | None, tokens: list[str], sort: str | None = None
) -> dict[str, Any]:
    """The union of both runs' nodes, each group's value in a and b, sorted by largest |delta|."""
    groups_a, rows_a = _indexed(data_a)
    groups_b, rows_b = _indexed(data_b)
    groups = _ordered(_union(groups_a, groups_b), GROUP_ORDER)
    if sort is not None and sort not in groups:
        raise RequestValidationError(f"sort must be one of the groups {groups}", "sort")
    rows = [_row(rows_a.get(k), rows_b.get(k), groups, tokens) for k in _union(rows_a, rows_b)]
    rows.sort(key=_sort_key(sort))
    return {
        "name": name,
        "groups": groups,
        "sortedBy": sort or "largest |delta| in any group",
        "counts": {
            "both": sum(r["inA"] and r["inB"] for r in rows),
            "onlyA": sum(r["inA"] and not r["inB"] for r in rows),
            "onlyB": sum(r["inB"] and not r["inA"] for r in rows),
        },
        "rows": rows,
    }


def derived_scalars_as_table(data: dict[str, Any]) -> dict[str, Any]:
    """A derived-scalars response (one value per token) in the shape of a node table."""
    groups = {"activation": data.get("activations") or []}
    if data.get("normalizedActivations") is not None:
        groups["normalizedActivation"] = data["normalizedActivations"]
    return {"nodeIndices": data.get("nodeIndices") or [], "activationsByGroupId": groups}


# --- top output tokens ----------------------------------------------------------------------


def _logits(data: dict[str, Any]) -> list[dict[str, Any]]:
    values = next(iter((data.get("activationsByGroupId") or {}).values()), [])
    strings = data.get("vocabTokenStringsForIndices") or []
    entries = []
    for i, node in enumerate(data.get("nodeIndices") or []):
        idx = node.get("tensorIndices") or [None, None]
        entries.append(
            {
                "position": idx[0],
                "tokenId": idx[-1],
                "token": strings[i] if i < len(strings) else None,
                "logit": values[i] if i < len(values) else None,
            }
        )
    return entries


def _with_ranks(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 1 = largest logit at its position; exact only within the run's own top 100."""
    by_position: dict[Any, list[float]] = {}
    for e in entries:
        if e["logit"] is not None:
            by_position.setdefault(e["position"], []).append(e["logit"])
    for e in entries:
        higher = sum(v > e["logit"] for v in by_position.get(e["position"], []))
        e["rank"] = higher + 1 if e["logit"] is not None and higher < TOP_OUTPUT_TOKENS else None
    return entries


def output_tokens(data_a: dict, data_b: dict, by_string: bool = False) -> dict[str, Any]:
    """The next-token logits in each run's top 100, side by side, with their ranks."""
    field = "token" if by_string else "tokenId"
    sides = [
        {(e["position"], e[field]): e for e in _with_ranks(_logits(d))} for d in (data_a, data_b)
    ]
    keys = [k for k in _union(*sides) if any(s.get(k) and s[k]["rank"] is not None for s in sides)]
    rows = []
    for k in keys:
        ea, eb = sides[0].get(k), sides[1].get(k)
        some = ea or eb
        rows.append(
            {
                "token": some["token"],
                "tokenId": some["tokenId"],
                "position": some["position"],
                "logit": cell(ea and ea["logit"], eb and eb["logit"]),
                "rank": {"a": ea and ea["rank"], "b": eb and eb["rank"]},
            }
        )
    big = TOP_OUTPUT_TOKENS + 1
    rows.sort(
        key=lambda r: (
            min(r["rank"]["a"] or big, r["rank"]["b"] or big),
            r["rank"]["a"] or big,
            r["rank"]["b"] or big,
        )
    )
    positions = [sorted({k[0] for k in s}, key=str) for s in sides]
    return {
        "alignedBy": "token string" if by_string else "token id",
        "positions": {"a": positions[0], "b": positions[1]},
        "ranksExactUpTo": TOP_OUTPUT_TOKENS,
        "rows": rows,
    }


# --- per-token sums -------------------------------------------------------------------------


def _kind(dst: str) -> str:
    if "attn" in dst or "attention" in dst:
        return "attention"
    if "mlp" in dst:
        return "mlp"
    return "embedding"


def per_token(tensor: dict[str, Any] | None) -> list[float] | None:
    """A per-token vector from an intermediate sum: 1-d as is, 2-d (query x key) summed by row."""
    if not tensor:
        return None
    if tensor.get("tensorType") == "tensor_1d":
        return list(tensor["value"])
    if tensor.get("tensorType") == "tensor_2d":
        return [sum(row) for row in tensor["value"]]
    return None


def _at(values: list | None, t: int):
    return values[t] if values is not None and t < len(values) else None


def token_sums(
    data_a: dict, data_b: dict, tokens_a: list[str], tokens_b: list[str]
) -> dict[str, Any]:
    """``componentSumsForTokenDisplay``'s intermediate sums per token, side by side.

    One column per (group, derived scalar); attention sums (query x key) are summed over the
    attended-to tokens, so every column holds one number per token.
    """
    sums = [
        (d or {}).get("intermediateSumActivationsByDstByGroupId") or {} for d in (data_a, data_b)
    ]
    columns, vectors = [], []
    for group in _ordered(_union(*sums), GROUP_ORDER):
        dsts = _union(*((s.get(group) or {}) for s in sums))
        for dst in sorted(dsts, key=lambda d: KIND_ORDER.index(_kind(d))):
            pair = [per_token((s.get(group) or {}).get(dst)) for s in sums]
            if pair[0] is None and pair[1] is None:
                continue
            shapes = [((s.get(group) or {}).get(dst) or {}).get("tensorType") for s in sums]
            shape = shapes[0] or shapes[1]
            columns.append(
                {
                    "group": group,
                    "dst": dst,
                    "kind": _kind(dst),
                    "summedOverAttendedTo": shape == "tensor_2d",
                }
            )
            vectors.append(pair)
    length = max([len(tokens_a), len(tokens_b)] + [len(v) for p in vectors for v in p if v])
    rows = [
        {
            "position": t,
            "tokenA": _at(tokens_a, t),
            "tokenB": _at(tokens_b, t),
            "cells": [cell(_at(va, t), _at(vb, t)) for va, vb in vectors],
        }
        for t in range(length)
    ]
    return {"columns": columns, "rows": rows}
