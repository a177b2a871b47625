"""Charts as inline SVG drawn on the server: a line chart with axes and units, a heatmap.

The pages draw their few charts here rather than ship a JavaScript chart library: an SVG
string costs a few kilobytes, renders without scripts, prints, and is read by screen
readers through its ``<title>`` and the table every chart sits beside. Every label is
escaped; the functions take plain values and do no I/O, so tests call them directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 100, 16, 40  # the legend sits in the right margin
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#0a7ea4")
Point = tuple[float, float]


def clock_label(ms: float) -> str:
    """``HH:MM`` UTC of a time in ms: the x axis of every time chart."""
    return time.strftime("%H:%M", time.gmtime(ms / 1000))


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / count
    return [low + k * step for k in range(count + 1)]


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round axis ticks covering ``low``..``high``: about ``count`` steps of 1, 2, 2.5 or 5
    times a power of ten (0, 0.25, 0.5, 0.75, 1 rather than 0, 0.245, 0.489...)."""
    if not high > low:
        return [low, low + 1]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _number(value: float) -> str:
    if value != 0 and (abs(value) >= 10_000 or abs(value) < 0.01):
        return f"{value:.2g}"
    return f"{value:.3g}"


def top_series(series: Mapping[str, Sequence[Point]], n: int) -> dict[str, Sequence[Point]]:
    """The ``n`` series that reach highest, highest first: a chart of a few lines stays
    readable where one of every feature would not (their table is beside it)."""
    peak = {
        k: max((y for _, y in v if math.isfinite(y)), default=-math.inf) for k, v in series.items()
    }
    return {k: series[k] for k in sorted(series, key=lambda k: -peak[k])[:n]}


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    y_label: str,
    x_label: str = "time (UTC)",
    y_floor: float | None = 0.0,
) -> Markup:
    """One line per series over time (x in ms), with both axes labelled and a legend.

    An empty or all-empty ``series`` draws the axes and says there is no data yet.
    """
    points = [p for line in series.values() for p in line if math.isfinite(p[1])]
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    parts.append(
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>'
        f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 4}" class="label" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{(y0 + y1) / 2}" class="label" text-anchor="middle" '
        f'transform="rotate(-90 12 {(y0 + y1) / 2})">{escape(y_label)}</text>'
    )
    if not points:
        parts.append(
            f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" '
            f'class="label">no data yet</text></svg>'
        )
        return Markup("".join(parts))  # noqa: S704 - every text above is escaped
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    lo_x, hi_x = min(xs), max(xs)
    y_ticks = nice_ticks(min(ys) if y_floor is None else min(y_floor, min(ys)), max(ys))
    lo_y, hi_y = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return x0 + (x - lo_x) / ((hi_x - lo_x) or 1) * (x1 - x0)

    def sy(y: float) -> float:
        return y0 - (y - lo_y) / (hi_y - lo_y) * (y0 - y1)

    for tick in y_ticks:
        parts.append(
            f'<line x1="{x0 - 4}" y1="{sy(tick):.1f}" x2="{x1}" y2="{sy(tick):.1f}" class="grid"/>'
            f'<text x="{x0 - 6}" y="{sy(tick) + 4:.1f}" class="tick" text-anchor="end">'
            f"{_number(tick)}</text>"
        )
    for tick in _ticks(lo_x, hi_x) if hi_x > lo_x else [lo_x]:
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{y0 + 16}" class="tick" text-anchor="middle">'
            f"{clock_label(tick)}</text>"
        )
    for k, (name, line) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        kept = sorted(p for p in line if math.isfinite(p[1]))
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept)
        if len(kept) > 1:
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}"/>')
        for x, y in kept if len(kept) <= 60 else kept[-1:]:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
        parts.append(
            f'<text x="{x1 + 8}" y="{y1 + 12 + 14 * k}" class="legend" fill="{colour}">'
            f"{escape(name[:14])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped


def heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    values: Mapping[tuple[str, str], float],
    *,
    title: str,
    unit: str,
    high: float,
) -> Markup:
    """A rows x columns grid shaded by value (white 0 to red at ``high`` and above), each
    cell labelled with its value; a missing cell is grey and says so."""
    cell_w, cell_h, head, side = 88, 26, 30, 150
    width = side + cell_w * max(1, len(columns)) + 8
    height = head + cell_h * max(1, len(rows)) + 24
    parts = [
        f'<svg class="chart heatmap" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for j, column in enumerate(columns):
        parts.append(
            f'<text x="{side + cell_w * j + cell_w / 2}" y="{head - 10}" class="tick" '
            f'text-anchor="middle">{escape(column[:14])}</text>'
        )
    for i, row in enumerate(rows):
        y = head + cell_h * i
        parts.append(
            f'<text x="{side - 6}" y="{y + cell_h / 2 + 4}" class="tick" text-anchor="end">'
            f"{escape(row[:22])}</text>"
        )
        for j, column in enumerate(columns):
            x = side + cell_w * j
            value = values.get((row, column))
            if value is None or not math.isfinite(value):
                fill, text = "#d0d7de", "n/a"
            else:
                share = max(0.0, min(1.0, value / high)) if high > 0 else 0.0
                fill = f"rgb(255,{round(255 - 200 * share)},{round(255 - 200 * share)})"
                text = _number(value)
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" '
                f'fill="{fill}"><title>{escape(row)} x {escape(column)}: {text}</title></rect>'
                f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2 + 4}" class="tick" '
                f'text-anchor="middle">{text}</text>'
            )
    parts.append(
        f'<text x="{side}" y="{height - 6}" class="label">{escape(unit)}; '
        f"red at {_number(high)} and above</text></svg>"
    )
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped
