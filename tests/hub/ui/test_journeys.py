"""The dashboard's journeys in a real headless Chromium against the hub served by uvicorn.

The hub's state comes from real paths (tests/hub/ui/dashhub.py): REST calls, the rollout
shell's ticks, drift windows merged and scored as the hub does. Each journey ends with a
screenshot that must show a rendered page, and what it changed is read back over REST.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from tests.clock import FakeClock
from tests.hub.test_api import Api
from tests.hub.ui.browser import Browser, assert_not_blank, chromium, serve
from tests.hub.ui.dashhub import app_of, make_dashboard_hub

PAGES = [
    "/ui/fleet", "/ui/devices/iris-1", "/ui/models", "/ui/models/iris",
    "/ui/models/iris/versions/2", "/ui/rollouts", "/ui/rollouts/r-1", "/ui/drift",
    "/ui/rounds", "/ui/audit",
]  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = make_dashboard_hub(tmp_path_factory.mktemp("hub"), FakeClock())
    app_of(api).state.ui_refresh_s = 0  # pages stay still under the journeys' clicks
    with api.client:
        yield api


@pytest.fixture(scope="module")
def base(hub: Api) -> Iterator[str]:
    yield from serve(hub)


@pytest.fixture
def browser(base: str, tmp_path: Path) -> Iterator[Browser]:
    driver = chromium(tmp_path / "profile")
    try:
        yield Browser(driver, base, tmp_path)
    finally:
        driver.quit()


def test_a_viewer_sees_the_fleet_a_device_and_a_lineage_and_no_action_button(
    hub: Api, browser: Browser
) -> None:
    browser.sign_in(hub.tokens["viewer"].token)
    assert browser.driver.current_url.endswith("/ui/fleet")
    tiles = browser.text(".tiles")
    assert "active\n106" in tiles, "6 iris and 100 sensor devices"
    assert "region=eu\n30" in tiles
    assert "iris v2\n3" in tiles, "the rollout's first stage took half of the six"
    assert "1–50 of 106" in browser.text(".pager")
    browser.press(browser.driver.find_element(By.LINK_TEXT, "iris v2"))
    assert "1–3 of 3" in browser.text(".pager"), "the devices that report running iris v2"
    browser.go("/ui/fleet")
    browser.driver.find_element(By.ID, "f-tag").send_keys("ring:gate")
    browser.press(browser.driver.find_element(By.CSS_SELECTOR, "form.filters button"))
    listed = browser.driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr td:first-child")
    assert [cell.text for cell in listed] == [f"iris-{k}" for k in range(6)]
    browser.press(browser.driver.find_element(By.LINK_TEXT, "iris-1"))
    device = browser.text()
    assert "Twin: desired against reported" in device
    assert "iris v" in browser.text("#twin")
    assert "None: the device has not refused an install." in device
    assert browser.driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    browser.go("/ui/models/iris")
    graph = browser.text("svg.lineage-graph")
    assert "v1 · released" in graph
    assert "v2 · released" in graph
    assert "v2, released, from v1" in browser.read("#lineage-text"), "the graph in words"
    assert browser.tab_to("lineage-v2"), "a version in the graph is reached by keyboard"
    graph_page = browser.driver.find_element(By.TAG_NAME, "html")
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    browser.wait_new(graph_page)
    assert browser.driver.current_url.endswith("/ui/models/iris/versions/2")
    lineage = browser.text("#lineage")
    assert "v2" in lineage
    assert "v1" in lineage, "a version's lineage reaches back to its parent"
    for page in ("/ui/rollouts/r-1", "/ui/drift", "/ui/fleet"):
        browser.go(page)
        assert browser.buttons() == [], f"a viewer sees an action on {page}"
    assert_not_blank(browser.screenshot("viewer-fleet"))


def test_every_page_fits_a_phone_and_labels_every_control(hub: Api, browser: Browser) -> None:
    browser.sign_in(hub.tokens["operator"].token)
    browser.driver.set_window_size(390, 844)
    for page in PAGES:
        browser.go(page)
        assert "Refused" not in browser.text("h1"), page
        assert browser.unlabelled() == [], page
        assert not browser.overflows(), f"{page} is wider than a phone"
    assert_not_blank(browser.screenshot("phone-audit"))


def test_an_operator_approves_pauses_resumes_and_acknowledges(hub: Api, browser: Browser) -> None:
    browser.sign_in(hub.tokens["operator"].token)
    browser.go("/ui/rollouts/r-1")
    assert browser.text("#phase") == "awaiting_approval"
    assert browser.tab_to("do-approve"), "the approve button is reachable by keyboard"
    page = browser.driver.find_element(By.TAG_NAME, "html")
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    browser.wait_new(page)
    assert browser.text("#phase") != "awaiting_approval"
    browser.driver.find_element(By.ID, "reason-pause").send_keys("looking at the gates")
    browser.press(browser.driver.find_element(By.ID, "do-pause"))
    assert browser.text("#phase") == "paused"
    assert "looking at the gates" in browser.text()
    browser.press(browser.driver.find_element(By.ID, "do-resume"))
    assert browser.text("#phase") != "paused"
    shown = hub.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()
    assert shown["phase"] not in ("awaiting_approval", "paused")
    operator = f"token:{hub.tokens['operator'].id}"
    done = [e["action"] for e in hub.call("GET", f"/api/v1/audit?actor={operator}").json()["items"]]
    assert {"rollout.approve", "rollout.pause", "rollout.resume"} <= set(done)
    assert_not_blank(browser.screenshot("operator-rollout"))

    browser.go("/ui/drift")
    [row] = browser.driver.find_elements(By.CSS_SELECTOR, "#alerts tr[id^=alert-]")
    alert_id = str(row.get_attribute("id")).removeprefix("alert-")
    row.find_element(By.NAME, "note").send_keys("eu sensors recalibrated")
    browser.press(row.find_element(By.CSS_SELECTOR, "button.ack"))
    assert "acknowledged" in browser.text(f"#alert-{alert_id}")
    alert = hub.call("GET", f"/api/v1/drift/alerts/{alert_id}", role="viewer").json()
    assert (alert["state"], alert["acknowledged_by"]) == ("acknowledged", operator)
    assert browser.driver.find_elements(By.CSS_SELECTOR, "svg.heatmap rect")
    assert_not_blank(browser.screenshot("operator-drift"))


def test_the_server_refuses_a_viewers_action_and_a_form_without_its_csrf_token(
    hub: Api, browser: Browser
) -> None:
    before = hub.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()["phase"]
    browser.sign_in(hub.tokens["viewer"].token)
    browser.go("/ui/rollouts/r-1")
    csrf = browser.driver.find_element(By.NAME, "csrf").get_attribute("value")
    browser.run(_POST, "/ui/rollouts/r-1/abort", {"csrf": csrf})
    assert "Refused: forbidden" in browser.text("h1")
    assert "operator" in browser.text("#problem")
    assert_not_blank(browser.screenshot("viewer-refused"))

    browser.driver.delete_all_cookies()
    browser.sign_in(hub.tokens["operator"].token)
    browser.go("/ui/rollouts/r-1")
    browser.run(_POST, "/ui/rollouts/r-1/abort", {"reason": "forged"})
    assert "CSRF" in browser.text("#problem")
    assert_not_blank(browser.screenshot("csrf-refused"))
    after = hub.call("GET", "/api/v1/rollouts/r-1", role="viewer").json()["phase"]
    assert after == before != "aborted"
    refused = hub.call("GET", "/api/v1/audit?outcome=rejected").json()["items"]
    reasons = {(e["actor"], e["action"], e["reason"]) for e in refused}
    assert (f"token:{hub.tokens['viewer'].id}", "rollout.abort", "forbidden") in reasons
    assert (f"token:{hub.tokens['operator'].id}", "ui.action", "csrf") in reasons


def test_an_open_page_shows_what_changed_without_a_reload(hub: Api, browser: Browser) -> None:
    app_of(hub).state.ui_refresh_s = 1
    try:
        browser.sign_in(hub.tokens["viewer"].token)
        browser.go("/ui/audit?action=api_token.create")
        browser.driver.execute_script("document.title = 'not reloaded'")
        made = hub.call("POST", "/api/v1/tokens", json={"role": "viewer", "name": "late"})
        assert made.status_code == 201, made.text
        new_id = made.json()["id"]
        WebDriverWait(browser.driver, 15).until(lambda d: new_id in browser.read("#audit"))
        assert browser.driver.title == "not reloaded", "the content changed, not the page"
        assert_not_blank(browser.screenshot("live-audit"))
    finally:
        app_of(hub).state.ui_refresh_s = 0


_POST = """
const form = document.createElement("form");
form.method = "post";
form.action = arguments[0];
for (const [name, value] of Object.entries(arguments[1])) {
  const field = document.createElement("input");
  field.type = "hidden"; field.name = name; field.value = value;
  form.appendChild(field);
}
document.body.appendChild(form);
form.submit();
"""
