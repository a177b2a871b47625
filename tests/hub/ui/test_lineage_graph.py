"""The lineage graph's layout and drawing: parent above child, no overlaps, the round on the
edge with its contributors and flagged deltas, links and words for every box."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from hub.ui.lineage import (
    MAX_LISTED,
    MAX_VERSIONS,
    VERSION_H,
    VERSION_W,
    Graph,
    layout,
    lineage_svg,
    lineage_text,
)

SVG = "{http://www.w3.org/2000/svg}"


@dataclass(frozen=True)
class V:
    version: int
    parent_version: int | None = None
    status: str = "released"
    lineage: dict[str, Any] = field(default_factory=dict)


def made_by_round(
    round_id: str, used: list[str], flagged: dict[str, str] | None = None
) -> dict[str, Any]:
    contributions: list[dict[str, Any]] = [{"device_id": d, "status": "used"} for d in used]
    contributions += [
        {"device_id": d, "status": "flagged", "reason": why} for d, why in (flagged or {}).items()
    ]
    return {
        "source": f"round:{round_id}", "strategy": "fedavg", "combiner": "mean",
        "contributions": contributions, "validation": {"candidate_accuracy": 0.91},
    }  # fmt: skip


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def boxes(graph: Graph) -> list[tuple[float, float, float, float]]:
    return [(n.x, n.y, VERSION_W, VERSION_H) for n in graph.nodes]


def test_a_chain_stacks_each_child_below_its_parent_in_one_column() -> None:
    graph = layout([V(3, 2, lineage=made_by_round("r-2", ["a", "b"])), V(1), V(2, 1)])
    v1, v2, v3 = (graph.node(k) for k in (1, 2, 3))
    assert v1.x == v2.x == v3.x
    assert v1.y + VERSION_H < v2.y < v3.y
    assert v3.maker is not None
    assert v3.y - (v2.y + VERSION_H) > v3.maker.height, "the round's box fits on the edge"
    assert v2.maker is None, "v2 was uploaded"


def test_branches_get_their_own_columns_and_a_parent_sits_over_its_children() -> None:
    graph = layout([
        V(1), V(2, 1, lineage=made_by_round("r-1", ["a"])), V(3, 1), V(4, 2), V(5, 2), V(6),
    ])  # fmt: skip
    v = {n.version: n for n in graph.nodes}
    assert len({v[4].x, v[5].x, v[3].x, v[6].x}) == 4, "each leaf its own column"
    assert v[2].x == (v[4].x + v[5].x) / 2
    assert v[1].x == (v[2].x + v[3].x) / 2
    assert v[2].y == v[3].y > v[1].y
    assert v[6].y == v[1].y, "a second root starts at the top"
    drawn = boxes(graph)
    assert not any(overlap(a, b) for i, a in enumerate(drawn) for b in drawn[i + 1 :])
    assert all(x + w <= graph.width and y + h <= graph.height for x, y, w, h in drawn)


def test_the_round_box_lists_contributors_and_flagged_deltas_with_their_reasons() -> None:
    many = [f"dev-{k}" for k in range(MAX_LISTED + 3)]
    flagged = {"dev-x": "norm_exceeded", "<b>": "dup & late"}
    graph = layout([V(1), V(2, 1, lineage=made_by_round("r-7", many, flagged))])
    svg = ET.fromstring(lineage_svg("iris", graph, current=2))  # noqa: S314 - our own output
    shown = ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]
    assert "round r-7" in shown
    assert "fedavg / mean" in shown
    assert f"{len(many)} contributing, 2 flagged" in shown
    assert "✓ dev-0" in shown
    assert "and 3 more" in shown
    titles = [t.text for t in svg.iter(f"{SVG}title")]
    assert "dev-x flagged: norm_exceeded" in titles
    assert "<b> flagged: dup & late" in titles, "escaped, and read back as written"
    links = [a.attrib["href"] for a in svg.iter(f"{SVG}a")]
    assert links == ["/ui/models/iris/versions/1", "/ui/rounds/r-7", "/ui/models/iris/versions/2"]
    labels = [a.attrib["aria-label"] for a in svg.iter(f"{SVG}a")]
    assert labels[1].startswith("v2, released, from v1 by round r-7 (fedavg / mean)")
    current = [r for r in svg.iter(f"{SVG}rect") if "current" in r.attrib.get("class", "")]
    assert len(current) == 1


def test_the_text_alternative_says_what_the_graph_shows() -> None:
    made = made_by_round("r-1", ["a", "b"], {"c": "duplicate"})
    graph = layout([V(1, lineage={"metrics": {"accuracy": 0.9}}), V(2, 1, lineage=made)])
    assert lineage_text(graph) == [
        "v1, released; validation accuracy 0.9",
        "v2, released, from v1 by round r-1 (fedavg / mean); 2 contributing devices: a, b; "
        "1 flagged or refused deltas: c flagged (duplicate); validation accuracy 0.91",
    ]


def test_only_the_newest_versions_are_drawn_and_a_missing_parent_is_named() -> None:
    chain = [V(1), *(V(k, k - 1) for k in range(2, MAX_VERSIONS + 11))]
    graph = layout(chain)
    assert len(graph.nodes) == MAX_VERSIONS
    oldest = graph.nodes[0]
    assert (oldest.version, oldest.parent, oldest.parent_drawn) == (11, 10, False)
    svg = ET.fromstring(lineage_svg("m", graph))  # noqa: S314 - our own output
    assert "from v10 (not drawn)" in [t.text for t in svg.iter(f"{SVG}text")]


def test_a_buffer_flush_is_drawn_without_a_round_link() -> None:
    lineage = made_by_round("x", ["a"]) | {"source": "buffer:m:3"}
    svg = ET.fromstring(lineage_svg("m", layout([V(1), V(2, 1, lineage=lineage)])))  # noqa: S314
    assert [a.attrib["href"] for a in svg.iter(f"{SVG}a")] == [
        "/ui/models/m/versions/1", "/ui/models/m/versions/2",
    ]  # fmt: skip
    assert "buffer m:3" in [t.text for t in svg.iter(f"{SVG}text")]


def test_an_empty_model_draws_an_empty_graph() -> None:
    graph = layout([])
    assert graph.nodes == ()
    assert ET.fromstring(lineage_svg("m", graph)).tag == f"{SVG}svg"  # noqa: S314


def test_a_version_naming_itself_or_a_newer_one_as_parent_is_drawn_as_a_root() -> None:
    graph = layout([V(1), V(2, 2), V(3, 4), V(4, 1)])
    assert {n.version for n in graph.nodes if not n.parent_drawn} == {1, 2, 3}
    assert graph.node(4).parent_drawn
