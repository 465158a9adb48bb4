"""What the HTML pages show beyond the JSON views: a run's own results, a job's record, the rows
of a comparison that must not be cut, and one timestamp format (``...Z``) everywhere.

The run page reuses the comparison (``api.comparison.compare``) of the run with itself, so that
its node table and output tokens are labelled exactly as on ``/compare``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from api.charts import Bar, diverging_bars, fmt
from api.comparison import compare
from api.run_views import side_of
from api.schemas import job_view
from models.store.run_keys import ablation_key, node_key
from models.store.tables import Run

RUN_NODE_ROWS = 10
RUN_TOKEN_ROWS = 10
LOSS_MEANING = (
    "the loss is the logit difference: the logit of the target token minus the logit of the "
    "distractor token, at the last position of the prompt"
)


def utc(value: dt.datetime | str | None) -> str:
    """``2026-12-01T10:00:00Z``: how every page writes a time (stored times are UTC)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_results(run: Run, group: str) -> dict[str, Any] | None:
    """The finished run's top nodes (by |value| in ``group``) and top output tokens."""
    if run.job.status != "finished":
        return None
    side = side_of(run)
    result = compare(side, side)
    table = result["nodeTables"][0] if result["nodeTables"] else None
    nodes, groups = [], []
    if table:
        groups = table["groups"]
        group = group if group in groups else groups[0]
        rows = sorted(table["rows"], key=lambda r: -abs(r["values"][group]["a"] or 0.0))
        nodes = rows[:RUN_NODE_ROWS]
    tokens = (result["topOutputTokens"] or {}).get("rows", [])[:RUN_TOKEN_ROWS]
    return {
        "table": table,
        "groups": groups,
        "group": group,
        "nodes": nodes,
        "hidden_nodes": max(0, len(table["rows"]) - len(nodes)) if table else 0,
        "tokens": tokens,
    }


def job_record(run: Run) -> dict[str, Any]:
    """The job's timings and where its result came from, as the run page lists them."""
    view = job_view(run.job)
    return {
        "id": view.id,
        "created": utc(view.created_at),
        "started": utc(view.started_at),
        "finished": utc(view.finished_at),
        "queued_seconds": view.queued_seconds,
        "run_seconds": view.run_seconds,
        "engine_seconds": view.engine_seconds,
        "attempts": view.attempts,
        "worker": view.worker,
        "cache_of": view.cache_of,
        "warnings": [w.message for w in view.warnings],
        "error": view.error.message if view.error else None,
    }


def pinned_keys(result: dict[str, Any]) -> set[str]:
    """Keys of the nodes either run ablated or traced: always shown on ``/compare``."""
    keys = set()
    for side in ("a", "b"):
        for row in result["settings"]:
            value = row[side]
            if row["name"] == "ablations":
                keys |= {ablation_key(item) for item in value or [] if isinstance(item, dict)}
            if row["name"] == "trace" and isinstance(value, dict):
                keys |= {node_key(v) for v in value.values() if isinstance(v, dict)}
    return keys


def with_pinned(rows: list[dict], shown: int, pinned: set[str]) -> tuple[list[dict], int]:
    """The first ``shown`` rows plus every pinned row after them; and how many are hidden."""
    kept = [r for i, r in enumerate(rows) if i < shown or node_key(r["node"]) in pinned]
    for row in kept:
        row["pinned"] = node_key(row["node"]) in pinned
    return kept, len(rows) - len(kept)


def ablation_texts(value: Any) -> Any:
    """A settings value as shown: ablations as ``TYPE:LAYER:INDICES = value`` lines."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return value
    return [f"{ablation_key(v)} = {fmt(v.get('value'))}" for v in value]


def loss_change_chart(loss: dict[str, Any]) -> Any:
    """The loss change itself as one bar around 0 (bars of a and b from 0 hide 0.17 in 2.3)."""
    if loss["a"] is None or loss["b"] is None:
        return None
    delta = loss["b"] - loss["a"]
    title = f"loss a {fmt(loss['a'])} -> b {fmt(loss['b'])} ({fmt(delta, True)})"
    return diverging_bars(
        [Bar("b − a", delta, title)],
        caption="Change of the loss (b − a)",
        width=600,
        row_height=26,
        label_width=60,
    )
