"""Charts for the pages, drawn on the server as inline SVG: no JavaScript, no build step.

``diverging_bars`` draws one horizontal bar per item from a zero line (positive to the right,
negative to the left), with the item's label on the left and its value at the bar's end; each bar
carries a ``<title>`` that browsers show on hover. ``heat_style`` colours a table cell by the sign
and size of a change. Text is escaped; sizes are in SVG user units, so the chart scales with the
page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

POSITIVE = "#2b6cb0"
NEGATIVE = "#c53030"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    title: str = ""  # hover text, e.g. "a 0.12 -> b 0.57"


def fmt(value: float | None, signed: bool = False) -> str:
    """A number as the pages print it: 4 significant digits, a sign for changes, - for none."""
    if value is None:
        return "\u2013"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _bar(bar: Bar, y: float, zero: float, scale: float, height: float, label_end: float) -> str:
    width = abs(bar.value) * scale
    x = zero if bar.value >= 0 else zero - width
    cls = "pos" if bar.value >= 0 else "neg"
    colour = POSITIVE if bar.value >= 0 else NEGATIVE
    text_x = x + width + 4 if bar.value >= 0 else x - 4
    anchor = "start" if bar.value >= 0 else "end"
    mid = y + height / 2
    title = escape(bar.title or f"{bar.label}: {fmt(bar.value, True)}")
    return (
        f'<g class="bar {cls}"><title>{title}</title>'
        f'<text class="label" x="{label_end:.1f}" y="{mid:.1f}" text-anchor="end" '
        f'dominant-baseline="middle">{escape(bar.label)}</text>'
        f'<rect x="{x:.1f}" y="{y + 2:.1f}" width="{max(width, 0.5):.1f}" '
        f'height="{height - 4:.1f}" fill="{colour}"/>'
        f'<text class="value" x="{text_x:.1f}" y="{mid:.1f}" text-anchor="{anchor}" '
        f'dominant-baseline="middle">{escape(fmt(bar.value, True))}</text></g>'
    )


def diverging_bars(
    bars: Sequence[Bar],
    *,
    caption: str,
    width: int = 900,
    row_height: int = 22,
    label_width: int = 330,
    value_room: int = 70,
) -> Markup:
    """An SVG bar chart of ``bars`` around a zero line; ``caption`` becomes its accessible name."""
    height = max(1, len(bars)) * row_height + 24
    biggest = max((abs(b.value) for b in bars), default=0.0) or 1.0
    has_neg = any(b.value < 0 for b in bars)
    has_pos = any(b.value > 0 for b in bars)
    plot_left, plot_right = label_width + value_room, width - value_room
    if has_neg and has_pos:
        zero = (plot_left + plot_right) / 2
        scale = (plot_right - plot_left) / 2 / biggest
    elif has_neg:
        zero, scale = plot_right, (plot_right - plot_left) / biggest
    else:
        zero, scale = plot_left, (plot_right - plot_left) / biggest
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" aria-label="{escape(caption)}">',
        f"<title>{escape(caption)}</title>",
        f'<line class="zero" x1="{zero:.1f}" y1="4" x2="{zero:.1f}" y2="{height - 16}" '
        f'stroke="#555" stroke-width="1"/>',
    ]
    for i, bar in enumerate(bars):
        parts.append(_bar(bar, 4 + i * row_height, zero, scale, row_height, label_width - 6))
    if not bars:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle">nothing to draw</text>')
    parts.append(
        f'<text class="axis" x="{zero:.1f}" y="{height - 4}" text-anchor="middle">0</text></svg>'
    )
    return Markup("".join(parts))


def heat_style(value: float | None, scale: float) -> str:
    """An inline CSS background for a table cell: blue for a rise, red for a fall."""
    if value is None or not scale:
        return ""
    strength = min(1.0, abs(value) / scale) * 0.6
    rgb = "43, 108, 176" if value >= 0 else "197, 48, 48"
    return f"background: rgba({rgb}, {strength:.2f})"
