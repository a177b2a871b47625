"""A real headless Chromium (Debian's chromium and chromium-driver) driven by selenium,
against the hub's app served by uvicorn on a free loopback port; and a PNG reader to check
that a screenshot shows something.

Without chromium-driver the journeys are skipped with a reason; CI sets
``EDGEFLEET_REQUIRE_CHROMIUM=1`` (.ci/run installs it) to make that a failure instead.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from hub.transport.http_server import HttpServer
from tests.hub.test_api import Api
from tests.hub.ui.dashhub import app_of

REQUIRE_CHROMIUM = "EDGEFLEET_REQUIRE_CHROMIUM"
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def find_driver() -> str | None:
    found = shutil.which("chromedriver")
    return found or next((d for d in DRIVERS if os.access(d, os.X_OK)), None)


def chromium(downloads: Path) -> WebDriver:
    driver_path = find_driver()
    if driver_path is None:
        reason = "chromedriver not found (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_CHROMIUM) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_CHROMIUM}=1 requires it")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={downloads}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


class Browser:
    """One browser at the hub's address: go to a page, sign in, press a button, look."""

    def __init__(self, driver: WebDriver, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    def go(self, path: str) -> None:
        self.driver.get(self.base + path)

    def sign_in(self, token: str) -> None:
        self.go("/")
        assert "/ui/signin" in self.driver.current_url
        self.driver.find_element(By.ID, "token").send_keys(token)
        self.press(self.driver.find_element(By.ID, "signin"))

    def press(self, element: WebElement) -> None:
        """Click ``element`` and wait for the page it leads to (or the script's POST)."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        self.wait_new(page)

    def run(self, script: str, *args: object) -> None:
        """Run ``script``, which submits a form, and wait for the page it leads to."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.execute_script(script, *args)
        self.wait_new(page)

    def wait_new(self, page: WebElement) -> None:
        WebDriverWait(self.driver, 20).until(lambda _: _gone(page))
        WebDriverWait(self.driver, 20).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def text(self, css: str = "main") -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def read(self, css: str) -> str:
        """The text of ``css`` read in one step inside the page: safe while the live script
        swaps the content (an element found before a swap is gone after it)."""
        found = self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
        )
        return str(found)

    def buttons(self) -> list[str]:
        """The labels of every button that would change something: those of the page's POST
        forms (not the sign-out in the header, nor a filter's GET form)."""
        found = self.driver.find_elements(By.CSS_SELECTOR, "main form[method=post] button")
        return [str(b.text) for b in found]

    def unlabelled(self) -> list[str]:
        """The ids (or names) of the page's visible form controls that no label names."""
        found: list[str] = self.driver.execute_script(_UNLABELLED)
        return found

    def overflows(self) -> bool:
        """True when the page is wider than the window (a phone would scroll sideways)."""
        return bool(
            self.driver.execute_script(
                "return document.documentElement.scrollWidth > window.innerWidth + 1"
            )
        )

    def tab_to(self, element_id: str, most: int = 60) -> bool:
        """Press Tab until the element with ``element_id`` has focus (True), or give up."""
        for _ in range(most):
            self.driver.switch_to.active_element.send_keys(Keys.TAB)
            if self.driver.switch_to.active_element.get_attribute("id") == element_id:
                return True
        return False

    def screenshot(self, name: str) -> np.ndarray:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        return read_png(path.read_bytes())


def _gone(page: WebElement) -> bool:
    """Whether ``page`` (an element of the old document) is gone. Besides the stale
    reference, chromedriver may answer "Node with given id does not belong to the
    document" when asked in the middle of the navigation: gone as well."""
    try:
        page.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise
    return False


_UNLABELLED = """
return Array.from(document.querySelectorAll("input, select, textarea"))
  .filter(c => c.type !== "hidden" && c.labels.length === 0 && !c.getAttribute("aria-label"))
  .map(c => c.id || c.name);
"""


def read_png(data: bytes) -> np.ndarray:
    """The pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes), as a
    height x width x channels array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), "only 8-bit, non-interlaced PNGs are read"
    assert colour in (2, 6), "only RGB and RGBA PNGs are read"
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    previous = np.zeros(width * channels, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: a running sum along the row, per channel
            current = (np.cumsum(line.reshape(-1, channels), axis=0) % 256).reshape(-1)
        elif kind == 2:
            current = (line + previous) % 256
        else:  # Average and Paeth depend on the pixel to the left: one pass per pixel
            current = np.zeros_like(line)
            for x in range(line.size):
                left = current[x - channels] if x >= channels else 0
                up, corner = previous[x], previous[x - channels] if x >= channels else 0
                if kind == 3:
                    guess = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    guess = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                current[x] = (line[x] + guess) % 256
        out[y] = current
        previous = current
    return out.reshape(height, width, channels)


def assert_not_blank(pixels: np.ndarray) -> None:
    """A page that rendered shows text and lines: its pixels vary, and not one colour
    covers nearly all of it."""
    rgb = pixels[:, :, :3].reshape(-1, 3)
    assert float(rgb.std()) > 10.0, "the screenshot is a single flat colour"
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) > 20, "too few colours for a rendered page"
    assert counts.max() / counts.sum() < 0.98


def serve(api: Api) -> Iterator[str]:
    server = HttpServer(app_of(api), "127.0.0.1", 0)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
