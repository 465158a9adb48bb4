"""The engine's side of a sweep: each point's request as a group of sub-requests, the groups run
in shared passes, and the numbers each point's row shows.

A point's group is exactly what ``worker.engine.run`` would run for its request alone (the same
parse, checks and TDB conversion), so a point's response is the response of the same request sent
as a job. ``run_point_groups`` is where the groups meet the engine (``worker.engine.groups``): they share
padded passes, and each is answered as if alone (TDB unions top-k across the sub-requests of one
batch, never across points).
"""

from __future__ import annotations

from typing import Any

import torch

from models.checks import validate_request
from models.wire import protocol as p
from models.wire.tdb import convert_tdb_request
from worker.engine.groups import settle_groups
from worker.engine.planning import Paths

TOP_K_DATA = "multiple_top_k_derived_scalars_response_data"


def group_of(endpoint: str, request: dict, model) -> tuple[list, list[Paths]]:
    """The inference sub-requests (and their error paths) ``worker.engine.run`` would run."""
    parsed = p.parse_request(endpoint, request)
    validate_request(endpoint, parsed, model.meta, model.tokenizer, model.autoencoders.info())
    if endpoint == "batched":
        subs = list(parsed.inference_sub_requests)
        return subs, [
            Paths.batched(i, s.processing_request_spec_by_name) for i, s in enumerate(subs)
        ]
    subs = [convert_tdb_request(spec) for spec in parsed.sub_requests]
    paths = [
        Paths(
            f"subRequests.{i}", dict.fromkeys(s.processing_request_spec_by_name, f"subRequests.{i}")
        )
        for i, s in enumerate(subs)
    ]
    return subs, paths


def run_point_groups(groups: list[tuple[list, list[Paths]]], model) -> list:
    """Each group's response, as ``run_batch`` answers it alone, or the ActqError that refused
    it: the groups share padded passes (``worker.engine.groups``), packed to its memory budget."""
    with torch.inference_mode(False):
        return settle_groups([subs for subs, _ in groups], model, [paths for _, paths in groups])


# --- the numbers of a point's row -------------------------------------------------------------


def node_table(response: dict) -> dict | None:
    """The first node table (top-k response data) of the response's first sub-response."""
    subs = response.get("inferenceSubResponses") or []
    if not subs:
        return None
    for data in (subs[0].get("processingResponseDataByName") or {}).values():
        if isinstance(data, dict) and data.get("responseDataType") == TOP_K_DATA:
            return data
    return None


def table_group(table: dict | None, group: str) -> str | None:
    groups = list((table or {}).get("activationsByGroupId") or {})
    return group if group in groups else (groups[0] if groups else None)


def _same(a: dict, b: dict) -> bool:
    return (
        a.get("nodeType") == b.get("nodeType")
        and a.get("layerIndex") == b.get("layerIndex")
        and list(a.get("tensorIndices") or []) == list(b.get("tensorIndices") or [])
        and a.get("passType", "forward") == b.get("passType", "forward")
    )


def node_value(table: dict | None, node: dict | None, group: str | None) -> float | None:
    """The node's value in the table's group; None when the node is not in its top-k."""
    if table is None or node is None or group is None:
        return None
    values = table["activationsByGroupId"].get(group) or []
    for i, candidate in enumerate(table.get("nodeIndices") or []):
        if _same(candidate, node) and i < len(values):
            return values[i]
    return None


def top_node(table: dict | None, group: str | None) -> dict[str, Any] | None:
    """The node of largest magnitude in the group (the first one on a tie)."""
    if table is None or group is None:
        return None
    values = table["activationsByGroupId"].get(group) or []
    nodes = table.get("nodeIndices") or []
    if not values or not nodes:
        return None
    best = max(range(min(len(values), len(nodes))), key=lambda i: (abs(values[i]), -i))
    return nodes[best]
