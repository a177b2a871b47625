"""A model's lineage as a drawn graph: versions as nodes, parent -> child edges through the
round or buffer flush that made the child, drawn as inline SVG on the server.

Each version has at most one parent, so the lineage is a forest: :func:`layout` places it
top-down (a root on top, each child one row below its parent), leaves in successive columns
and every parent centred over its children, so edges never cross. A version made by a round
(or an asynchronous buffer flush) gets a *maker* box on its incoming edge: the round, its
strategy and combiner, the devices whose deltas were used, and the deltas that were flagged
or refused, each with its reason as a ``<title>`` (shown on hover, read by screen readers).
A row is as tall as its tallest maker box, so nothing overlaps.

:func:`lineage_svg` draws it: every version and round is a link (SVG ``<a>``, reached with
Tab), every box carries an ``aria-label`` that says in words what the box shows, and
:func:`lineage_text` is the same graph as lines of text for the page's text alternative.
The functions take plain values and do no I/O; every label is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from markupsafe import Markup, escape

MAX_VERSIONS = 40
"""The newest versions drawn; older ones are the table's (a parent left out is named)."""
MAX_LISTED = 6
"""Devices (and flagged deltas) listed by name in a maker box; the rest are counted."""
COLUMN, VERSION_W, VERSION_H, MAKER_W = 240, 160, 46, 220
LINE, GAP, MARGIN = 15, 22, 12


class VersionLike(Protocol):
    """What a version needs for the graph (the REST ``ModelVersion`` has it)."""

    @property
    def version(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def parent_version(self) -> int | None: ...

    @property
    def lineage(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Maker:
    """The round or buffer flush that made a version, as its box on the incoming edge."""

    source: str
    strategy: str
    devices: tuple[str, ...]
    flagged: tuple[tuple[str, str, str], ...]
    """(device, status, reason) of each delta flagged or refused."""

    @property
    def label(self) -> str:
        kind, _, rest = self.source.partition(":")
        return f"{kind} {rest}" if rest else self.source

    @property
    def round_id(self) -> str | None:
        kind, _, rest = self.source.partition(":")
        return rest if kind == "round" and rest else None

    @property
    def lines(self) -> int:
        """Text lines in the box: label, strategy, counts, then the listed names."""
        listed = min(len(self.devices), MAX_LISTED) + (len(self.devices) > MAX_LISTED)
        flagged = min(len(self.flagged), MAX_LISTED) + (len(self.flagged) > MAX_LISTED)
        return 3 + listed + flagged

    @property
    def height(self) -> float:
        return self.lines * LINE + 10


@dataclass(frozen=True)
class Node:
    """A drawn version: its place (top-left corner of its box), parent, and maker."""

    version: int
    status: str
    parent: int | None
    parent_drawn: bool
    x: float
    y: float
    depth: int
    maker: Maker | None
    validation: str


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    width: float
    height: float

    def node(self, version: int) -> Node:
        return next(n for n in self.nodes if n.version == version)


def maker_of(lineage: Mapping[str, Any]) -> Maker | None:
    """The maker box of a version whose lineage names a round or buffer; None for an
    uploaded version."""
    source = lineage.get("source")
    if not isinstance(source, str) or not source:
        return None
    listed = [c for c in lineage.get("contributions") or [] if isinstance(c, Mapping)]
    devices = sorted({str(c.get("device_id")) for c in listed if c.get("status") == "used"})
    flagged = sorted(
        (str(c.get("device_id")), str(c.get("status")), str(c.get("reason") or "no reason"))
        for c in listed
        if c.get("status") in ("flagged", "refused")
    )
    strategy = " / ".join(str(lineage[k]) for k in ("strategy", "combiner") if lineage.get(k))
    return Maker(source, strategy, tuple(devices), tuple(flagged))


def _validation(lineage: Mapping[str, Any]) -> str:
    """The headline validation figure: the candidate's accuracy for a round's version, the
    accuracy measured at upload for another; else the first number recorded."""
    metrics = lineage.get("validation") or lineage.get("metrics") or {}
    for key in ("candidate_accuracy", "accuracy"):
        if isinstance(metrics.get(key), int | float):
            return f"accuracy {metrics[key]:.3g}"
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)][:1]
    return ", ".join(f"{k[:14]} {v:.3g}" for k, v in shown)


def layout(versions: Sequence[VersionLike]) -> Graph:
    """Place the newest :data:`MAX_VERSIONS` of ``versions`` as a top-down forest."""
    kept = sorted(versions, key=lambda v: v.version)[-MAX_VERSIONS:]
    by_version = {v.version: v for v in kept}
    # a parent is older than its child; one that is not (never written so) would loop
    drawn = {
        v.version for v in kept if v.parent_version in by_version and v.parent_version < v.version
    }
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    for v in kept:
        if v.version in drawn and v.parent_version is not None:
            children.setdefault(v.parent_version, []).append(v.version)
        else:
            roots.append(v.version)
    depth: dict[int, int] = {}
    column: dict[int, float] = {}
    next_column = 0.0

    def place(version: int, level: int) -> None:
        nonlocal next_column
        depth[version] = level
        below = children.get(version, [])
        for child in below:
            place(child, level + 1)
        if below:
            column[version] = (column[below[0]] + column[below[-1]]) / 2
        else:
            column[version] = next_column
            next_column += 1

    for root in roots:
        place(root, 0)
    makers = {v.version: maker_of(v.lineage) for v in kept}
    levels = max(depth.values(), default=-1) + 1
    gaps = [  # the space above each row: room for its tallest maker box
        max((m.height for k, m in makers.items() if m and depth[k] == d), default=0.0)
        + 2 * GAP if d else 0.0
        for d in range(levels)
    ]  # fmt: skip
    tops: list[float] = []
    y = float(MARGIN + LINE)  # room for a "from vN" above a root whose parent is not drawn
    for d in range(levels):
        y += gaps[d]
        tops.append(y)
        y += VERSION_H
    nodes = tuple(
        Node(
            v.version,
            v.status,
            v.parent_version,
            v.version in drawn,
            MARGIN + column[v.version] * COLUMN + (COLUMN - VERSION_W) / 2,
            tops[depth[v.version]],
            depth[v.version],
            makers[v.version],
            _validation(v.lineage),
        )
        for v in kept
    )
    width = MARGIN * 2 + max(next_column, 1.0) * COLUMN
    return Graph(nodes, width, y + MARGIN)


def _describe(node: Node) -> str:
    """One version in words: the aria-label of its box and its line in the text list."""
    said = f"v{node.version}, {node.status}"
    if node.parent is not None:
        said += f", from v{node.parent}"
    m = node.maker
    if m is not None:
        said += f" by {m.label}"
        if m.strategy:
            said += f" ({m.strategy})"
        said += f"; {len(m.devices)} contributing devices"
        if m.devices:
            said += f": {', '.join(m.devices)}"
        said += f"; {len(m.flagged)} flagged or refused deltas"
        if m.flagged:
            said += ": " + ", ".join(f"{d} {s} ({r})" for d, s, r in m.flagged)
    elif node.parent is not None:
        said += ", uploaded"
    if node.validation:
        said += f"; validation {node.validation}"
    return said


def lineage_text(graph: Graph) -> list[str]:
    """The graph as lines of text, oldest version first: the page's text alternative."""
    return [_describe(n) for n in graph.nodes]


def _maker_box(m: Maker, x: float, y: float) -> str:
    lines = [
        f'<text x="{x + 8}" y="{y + LINE}" class="maker-title">{escape(m.label[:30])}</text>',
        f'<text x="{x + 8}" y="{y + 2 * LINE}">{escape(m.strategy[:34])}</text>',
        f'<text x="{x + 8}" y="{y + 3 * LINE}">{len(m.devices)} contributing, '
        f"{len(m.flagged)} flagged</text>",
    ]
    row = 4
    for device in m.devices[:MAX_LISTED]:
        lines.append(f'<text x="{x + 14}" y="{y + row * LINE}">✓ {escape(device[:30])}</text>')
        row += 1
    if len(m.devices) > MAX_LISTED:
        more = len(m.devices) - MAX_LISTED
        lines.append(f'<text x="{x + 14}" y="{y + row * LINE}">and {more} more</text>')
        row += 1
    for device, status, reason in m.flagged[:MAX_LISTED]:
        lines.append(
            f'<text x="{x + 14}" y="{y + row * LINE}" class="flagged">'
            f"<title>{escape(device)} {escape(status)}: {escape(reason)}</title>"
            f"✗ {escape(device[:18])} {escape(reason[:16])}</text>"
        )
        row += 1
    if len(m.flagged) > MAX_LISTED:
        more = len(m.flagged) - MAX_LISTED
        lines.append(f'<text x="{x + 14}" y="{y + row * LINE}">and {more} more flagged</text>')
    rect = f'<rect x="{x}" y="{y}" width="{MAKER_W}" height="{m.height}" rx="4" class="maker"/>'
    return rect + "".join(lines)


def lineage_svg(name: str, graph: Graph, *, current: int | None = None) -> Markup:
    """Draw ``graph`` of model ``name``; ``current``'s box is outlined (the version shown)."""
    title = f"Lineage of {name}: {len(graph.nodes)} versions, parent above child"
    parts = [
        f'<svg class="lineage-graph" viewBox="0 0 {graph.width} {graph.height:.0f}" '
        f'width="{graph.width}" height="{graph.height:.0f}" role="group" '
        f'aria-labelledby="lineage-graph-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="lineage-graph-title">{escape(title)}</title>'
    ]
    base = f"/ui/models/{escape(name)}"
    edges, boxes = [], []
    for node in graph.nodes:
        cx, top = node.x + VERSION_W / 2, node.y
        if node.parent_drawn and node.parent is not None:
            parent = graph.node(node.parent)
            px, py = parent.x + VERSION_W / 2, parent.y + VERSION_H
            edges.append(
                f'<path d="M{px:.1f},{py:.1f} C{px:.1f},{(py + top) / 2:.1f} '
                f'{cx:.1f},{(py + top) / 2:.1f} {cx:.1f},{top:.1f}" class="edge" '
                f'marker-end="url(#lineage-arrow)"><title>v{parent.version} → '
                f"v{node.version}</title></path>"
            )
            if node.maker is None:
                edges.append(
                    f'<text x="{cx + 6:.1f}" y="{top - GAP / 2:.1f}" class="muted">uploaded</text>'
                )
        elif node.parent is not None:
            boxes.append(
                f'<text x="{cx:.1f}" y="{top - 6:.1f}" text-anchor="middle" class="muted">'
                f"from v{node.parent} (not drawn)</text>"
            )
        if node.maker is not None and node.parent_drawn:
            m = node.maker
            mx, my = cx - MAKER_W / 2, top - GAP - m.height
            label = escape(_describe(node).split("; validation")[0])
            box = _maker_box(m, mx, my)
            if m.round_id is not None:
                boxes.append(
                    f'<a href="/ui/rounds/{escape(m.round_id)}" aria-label="{label}">{box}</a>'
                )
            else:
                boxes.append(f'<g role="img" aria-label="{label}">{box}</g>')
        shown = " current" if node.version == current else ""
        boxes.append(
            f'<a href="{base}/versions/{node.version}" id="lineage-v{node.version}" '
            f'aria-label="{escape(_describe(node))}">'
            f'<rect x="{node.x:.1f}" y="{top:.1f}" width="{VERSION_W}" height="{VERSION_H}" '
            f'rx="6" class="version state-{escape(node.status)}{shown}"/>'
            f'<text x="{cx:.1f}" y="{top + 18:.1f}" text-anchor="middle" class="version-name">'
            f"v{node.version} · {escape(node.status)}</text>"
            f'<text x="{cx:.1f}" y="{top + 35:.1f}" text-anchor="middle">'
            f"{escape(node.validation or 'no validation yet')}</text></a>"
        )
    parts.append(
        '<defs><marker id="lineage-arrow" viewBox="0 0 8 8" refX="7" refY="4" '
        'markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker>'
        "</defs>"
    )
    parts.extend(edges)
    parts.extend(boxes)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped
