"""``GET /docs``: Swagger UI served by the hub itself, so the API docs work offline.

FastAPI's default page loads Swagger UI's script and styles from a CDN, which a hub on a
plant network cannot reach. This follows FastAPI's self-hosting recipe
(``get_swagger_ui_html`` pointed at files the app serves) with the files a PyPI package
ships: ``fastapi-offline``'s copy of Swagger UI 5. ``swagger-ui-bundle`` was the first
choice, but its newest release (1.1.0) ships Swagger UI 4.15.5, which treats only
``openapi: 3.0.x`` documents as OpenAPI 3 and shows "Unable to render this definition"
for the 3.1.0 document FastAPI writes; Swagger UI 5 renders 3.1 (docs/operations.md).

``validatorUrl`` is off: Swagger UI would otherwise send the schema's address to
validator.swagger.io from the reader's browser. The page and its assets need no token
(the OpenAPI document does not either: it describes the API, not the fleet).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSETS_DIR = files("fastapi_offline") / "static"


def install(app: FastAPI) -> None:
    """Serve Swagger UI at :data:`DOCS_PATH` and its files under :data:`ASSETS_PATH`."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIR)), name="docs.assets")

    @app.get(DOCS_PATH, include_in_schema=False, name="docs.page")
    def docs_page(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )
