"""``/docs`` works with no internet access: the page and every asset come from the hub."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clock import FakeClock
from tests.hub.test_api import Api, make_api


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    built = make_api(tmp_path, clock)
    with built.client:
        yield built


def test_docs_page_and_every_asset_it_loads_come_from_the_hub(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert not re.search(r"https?://", page.text), "the page names an outside address"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {Path(a).name for a in assets} == {
        "swagger-ui.css",
        "favicon.png",
        "swagger-ui-bundle.js",
    }
    for asset in assets:
        response = api.client.get(asset)
        assert response.status_code == 200, asset
        assert response.content
    [spec] = re.findall(r"url: '([^']+)'", page.text)
    assert api.client.get(spec).json()["openapi"].startswith("3.1")


def test_bundled_swagger_ui_renders_openapi_3_1(api: Api) -> None:
    """Swagger UI 4 (what swagger-ui-bundle ships) shows "Unable to render this
    definition" for a 3.1 document; version 5 knows 3.1 (its ``isOAS31`` check)."""
    script = api.client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "isOAS31" in script


def test_swagger_ui_sends_the_schema_to_no_validator(api: Api) -> None:
    assert '"validatorUrl": null' in api.client.get("/docs").text
