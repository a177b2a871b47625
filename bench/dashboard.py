"""The dashboard's fleet page with 10,000 devices, beside the REST list call, and its weight.

Setup: :func:`bench.hub_api.fleet_app`, a store of ``DEVICES`` devices (tags, statuses, two
model versions) and the real app (:func:`hub.api.create_app`, which serves the dashboard under
``/ui``) on uvicorn in a thread on 127.0.0.1, and two httpx keep-alive clients: one signed
in to the dashboard (its session cookie), one with the same viewer token as a bearer.

Candidates, sampled round-robin one request each (``SAMPLES`` per candidate):

- ``fleet_page``: ``GET /ui/fleet``, the first page of 50 devices and every count the page
  shows (status, presence, reported model, health, the 20 most common tags, the last hour
  of the audit log), rendered to HTML;
- ``fleet_page_deep``: ``GET /ui/fleet?offset=9950``, its last page;
- ``rest_devices``: ``GET /api/v1/devices?limit=50``, the REST call for the same page;
- ``rest_devices_default``: ``GET /api/v1/devices`` (the default page of 100).

Times are whole round trips on loopback (the server's time plus a few hundred
microseconds of client and socket), so they bound the server time from above. Reported: p50
and p95 in ms; the goal is the fleet page's p95 <= 300 ms. Page weight: the bytes of the
fleet page's HTML plus every stylesheet, script and image it links (all the browser fetches
on a first load, uncompressed); the goal is <= 300 KB. Writes
``bench/results/dashboard.json``.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from bench.common import fetch, report, report_percentiles, sample, serve, write_result
from bench.hub_api import DEVICES, fleet_app

SAMPLES = 200
WARMUP = 10
GOAL_P95_MS = 300.0
GOAL_WEIGHT_KB = 300.0
LINKED = re.compile(r'<(?:link[^>]*\shref|script[^>]*\ssrc|img[^>]*\ssrc)="([^"]+)"')


def page_weight(client: httpx.Client, path: str) -> dict[str, int]:
    """Bytes of ``path`` and of each file it links, by URL."""
    page = client.get(path)
    page.raise_for_status()
    sizes = {path: len(page.content)}
    for url in LINKED.findall(page.text):
        linked = client.get(url)
        linked.raise_for_status()
        sizes[url] = len(linked.content)
    return sizes


def main() -> dict[str, Any]:
    with (
        fleet_app() as (_, app, token),
        serve(app) as url,
        httpx.Client(base_url=url, follow_redirects=True) as browser,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as rest,
    ):
        signed = browser.post("/ui/signin", data={"token": token})
        if signed.status_code != 200 or "1–50 of 10000" not in signed.text:
            raise RuntimeError(f"the fleet page did not list the fleet: {signed.text[:300]}")
        fns = {
            "fleet_page": fetch(browser, "/ui/fleet"),
            "fleet_page_deep": fetch(browser, "/ui/fleet?offset=9950"),
            "rest_devices": fetch(rest, "/api/v1/devices?limit=50"),
            "rest_devices_default": fetch(rest, "/api/v1/devices"),
        }
        sample(fns, WARMUP)
        samples = sample(fns, SAMPLES)
        weights = page_weight(browser, "/ui/fleet")

    results: dict[str, Any] = {
        "devices_in_store": DEVICES,
        "samples": SAMPLES,
        "server": "uvicorn in a thread on 127.0.0.1, httpx keep-alive clients, round trips",
    }
    results.update(report_percentiles(samples))
    fleet, rest_page = results["fleet_page"], results["rest_devices"]
    results["fleet_p95_over_rest_p95"] = fleet["p95_ms"] / rest_page["p95_ms"]
    report("fleet page p95 / REST page p95", f"{results['fleet_p95_over_rest_p95']:.1f}x")
    results["goal_p95_ms"] = GOAL_P95_MS
    results["goal_met"] = fleet["p95_ms"] <= GOAL_P95_MS
    report(
        "fleet page p95 (first page of 10,000)",
        f"{fleet['p95_ms']:.2f} ms",
        goal=f"<= {GOAL_P95_MS:.0f} ms",
        met=results["goal_met"],
    )
    total_kb = sum(weights.values()) / 1024
    results["first_load_bytes"] = weights
    results["first_load_kb"] = total_kb
    results["weight_goal_met"] = total_kb <= GOAL_WEIGHT_KB
    report(
        "fleet page first load (HTML + CSS + JS)",
        f"{total_kb:.1f} KB",
        goal=f"<= {GOAL_WEIGHT_KB:.0f} KB",
        met=results["weight_goal_met"],
    )
    write_result("dashboard", results)
    return results
