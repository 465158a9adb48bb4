"""A sweep's heatmaps, drawn on the server as inline SVG: no JavaScript, no build step.

``panels(rows)`` splits a sweep's table into the grids a person reads: for heads, one layer x head
grid per (token, value); for neurons and latents, one node x token grid per value. ``heatmap``
draws one grid: each cell is coloured by the point's loss change (blue for a rise, red for a
fall, white for none, grey for a point without a loss), carries a ``<title>`` that browsers show
on hover, and links to the point's comparison with the clean baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from api.charts import fmt

CELL = 34
LABEL_WIDTH = 110
HEADER_HEIGHT = 28


@dataclass
class Panel:
    title: str
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    cells: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


def _value_text(value: float | None) -> str:
    return "mean" if value is None else fmt(value)


def panels(rows: list[dict[str, Any]]) -> list[Panel]:
    out: dict[Any, Panel] = {}
    for row in rows:
        if row["nodeType"] == "attention_head":
            key = (row["position"], row["value"])
            title = f"token {row['position']}, value {_value_text(row['value'])}"
            r, c = f"L{row['layer']}", f"H{row['nodeIndex']}"
        else:
            key = row["value"]
            title = f"value {_value_text(row['value'])}"
            r, c = f"L{row['layer']} #{row['nodeIndex']}", f"t{row['position']}"
        panel = out.setdefault(key, Panel(title))
        if r not in panel.row_labels:
            panel.row_labels.append(r)
        if c not in panel.col_labels:
            panel.col_labels.append(c)
        panel.cells[(panel.row_labels.index(r), panel.col_labels.index(c))] = row
    return list(out.values())


def _fill(change: float | None, scale: float) -> str:
    if change is None:
        return "#cbd5e0"
    strength = min(1.0, abs(change) / scale) if scale else 0.0
    base = (43, 108, 176) if change >= 0 else (197, 48, 48)
    rgb = [round(255 + (b - 255) * strength) for b in base]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def heatmap(panel: Panel, scale: float) -> Markup:
    width = LABEL_WIDTH + CELL * len(panel.col_labels) + 8
    height = HEADER_HEIGHT + CELL * len(panel.row_labels) + 8
    caption = f"loss change by grid point, {panel.title}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart heatmap" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" aria-label="{escape(caption)}">',
        f"<title>{escape(caption)}</title>",
    ]
    for j, label in enumerate(panel.col_labels):
        x = LABEL_WIDTH + j * CELL + CELL / 2
        parts.append(f'<text x="{x:.0f}" y="18" text-anchor="middle">{escape(label)}</text>')
    for i, label in enumerate(panel.row_labels):
        y = HEADER_HEIGHT + i * CELL + CELL / 2
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y:.0f}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(label)}</text>'
        )
    for (i, j), row in sorted(panel.cells.items()):
        x, y = LABEL_WIDTH + j * CELL, HEADER_HEIGHT + i * CELL
        change = row.get("lossChange")
        title = (
            f"{row['nodeType']} L{row['layer']} #{row['nodeIndex']} at token {row['position']} "
            f"= {_value_text(row['value'])}: loss change {fmt(change, True)} ({row['status']})"
        )
        cell = (
            f'<rect class="cell" x="{x}" y="{y}" width="{CELL - 2}" height="{CELL - 2}" '
            f'fill="{_fill(change, scale)}"><title>{escape(title)}</title></rect>'
        )
        if row.get("compareUrl"):
            cell = f'<a href="{escape(row["compareUrl"])}">{cell}</a>'
        parts.append(cell)
    parts.append("</svg>")
    return Markup("".join(parts))
