"""The server-side SVG charts: axes with units, escaped labels, honest empty states."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from hub.ui.charts import clock_label, heatmap, line_chart, nice_ticks, top_series

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000_000


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - the charts' own output, parsed to check it


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in parse(svg).iter(f"{SVG}text")]


def test_a_line_chart_labels_both_axes_with_units_and_times_in_utc() -> None:
    svg = line_chart(
        {"p95": [(T0, 4.0), (T0 + 60_000, 9.0)]}, title="latency", y_label="latency (ms)"
    )
    labels = texts(svg)
    assert "latency (ms)" in labels
    assert "time (UTC)" in labels
    assert clock_label(T0) in labels
    assert clock_label(T0 + 60_000) in labels
    assert "p95" in labels
    [line] = parse(svg).iter(f"{SVG}polyline")
    assert len(line.attrib["points"].split()) == 2


def test_a_line_chart_escapes_its_labels_and_skips_non_finite_points() -> None:
    svg = line_chart(
        {"<b>x</b>": [(T0, 1.0), (T0 + 1, math.nan), (T0 + 2, 2.0)]},
        title="<script>",
        y_label="a & b",
    )
    assert "<script>" not in svg
    assert "<b>" not in svg
    assert "a & b" in texts(svg)
    [line] = parse(svg).iter(f"{SVG}polyline")
    assert len(line.attrib["points"].split()) == 2


def test_a_chart_without_data_draws_its_axes_and_says_so() -> None:
    svg = line_chart({"psi": []}, title="drift", y_label="PSI")
    assert "no data yet" in texts(svg)
    assert "PSI" in texts(svg)


def test_a_heatmap_shades_at_the_threshold_and_marks_missing_cells() -> None:
    svg = heatmap(
        ["f1", "f2"], ["fleet", "region=eu"], {("f1", "fleet"): 0.5, ("f2", "fleet"): 0.0},
        title="drift", unit="PSI", high=0.25,
    )  # fmt: skip
    fills = [r.attrib["fill"] for r in parse(svg).iter(f"{SVG}rect")]
    assert fills == ["rgb(255,55,55)", "#d0d7de", "rgb(255,255,255)", "#d0d7de"]
    assert texts(svg).count("n/a") == 2
    assert any("PSI; red at 0.25" in t for t in texts(svg))


def test_axis_ticks_are_round_numbers_covering_the_data() -> None:
    assert nice_ticks(0.0, 0.978) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.0, 9.0) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert nice_ticks(3.0, 3.0) == [3.0, 4.0]
    svg = line_chart({"psi": [(T0, 0.0), (T0 + 1, 0.978)]}, title="t", y_label="PSI")
    assert {"0", "0.25", "0.5", "0.75", "1"} <= set(texts(svg))


def test_only_the_highest_series_are_drawn_highest_first() -> None:
    series = {f"f{k}": [(T0, float(k)), (T0 + 1, math.nan)] for k in range(8)}
    assert list(top_series(series, 3)) == ["f7", "f6", "f5"]
