"""The drift page over alerts and scores the hub's own drift job produced (the eu cohort
drifts on f2 and f7 in the last two of three buckets: tests/hub/ui/dashhub.py)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from tests.clock import FakeClock
from tests.hub.ui.dashhub import make_dashboard_hub

CELL = re.compile(r"<title>(f\d+) x ([^:<]+:\d\d): ([0-9.e+-]+)</title>")


def cells(svg_section: str) -> dict[tuple[str, str], float]:
    return {(f, col): float(v) for f, col, v in CELL.findall(svg_section)}


def test_the_drift_page_shows_the_cohort_drifting_over_time_and_across_cohorts(
    tmp_path: Path, clock: FakeClock
) -> None:
    api = make_dashboard_hub(tmp_path, clock)
    with TestClient(api.client.app) as client:
        client.post("/ui/signin", data={"token": api.tokens["viewer"].token})
        page = client.get("/ui/drift?cohort=region%3Deu")
        assert page.status_code == 200
        across = page.text[page.text.index('id="heat-h"') : page.text.index('id="heat-t-h"')]
        latest = {
            (f, c): v for f, c, v in re.findall(
                r"<title>(f\d+) x (fleet|region=\w+): ([0-9.e+-]+)</title>", across
            )
        }  # fmt: skip
        assert float(latest[("f2", "region=eu")]) > 0.25 > float(latest[("f2", "region=us")])
        over_time = cells(page.text[page.text.index('id="heat-t-h"') :])
        times = sorted({t for _, t in over_time})
        assert len(times) == 3
        f2 = [over_time[("f2", t)] for t in times]
        assert f2[0] < 0.25 < min(f2[1:]), "eu's f2 drifts in its last two buckets"
        assert all(over_time[("f0", t)] < 0.25 for t in times)
        assert "region=eu" in page.text[page.text.index('id="alerts-h"') :]
        models = client.get("/ui/models/sensor").text
        assert "accuracy 0.3, rows 500" in models, "an upload's validation metrics"
        bad = client.get("/ui/drift?cohort=%00")
        assert bad.status_code == 422
