"""The pages a browser opens: the web page at /ui, and the API docs at /docs (Swagger UI) and /redoc.

Everything they load is served by the service itself, so they work on a machine with no network
beyond the loopback address (most GPU clusters), where FastAPI's own docs pages, which load Swagger
UI and ReDoc from a CDN (and ReDoc's fonts from Google), are blank.

- /ui: static files shipped in the package (flux_api/ui: plain HTML, CSS and JS, no build step).
- /docs, /redoc: FastAPI's documented self-hosting ("Custom Docs UI Static Assets"): the app is made
  with docs_url=None and redoc_url=None, and these routes render FastAPI's own pages with the asset
  URLs pointing here. The assets (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and a
  favicon) come from the fastapi-offline package, which exists to ship exactly these files and
  follows their releases; we serve its folder and use nothing else of it. One change: ReDoc's bundle
  shows Redocly's logo from a CDN, so it is served with an empty image there (redoc_bundle).

None of these is in the OpenAPI document (they are not part of the API), and they are plain Starlette
routes and mounts, so the app-wide `reject_unexpected_input` does not apply to them: the OAuth2
redirect page must take the query string an identity provider sends.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
# Under /docs, so that a rule that leaves "/docs..." open (no API key needed) covers its assets too.
DOCS_ASSETS_URL = "/docs/static"
UI_URL = "/ui"
# Swagger UI would send the spec to validator.swagger.io for a badge when the page is not on localhost.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def install_pages(app: FastAPI) -> None:
    """Mount /ui and the docs assets, and add /docs, /docs/oauth2-redirect and /redoc."""
    install_ui(app)
    install_docs(app)


def install_ui(app: FastAPI) -> None:
    async def ui_without_slash(request: Request) -> RedirectResponse:
        # A relative Location ("ui/" from ".../ui"), so that the page's relative URLs (its files, and
        # the API one level up) work under any prefix a proxy adds, and no Host header is trusted.
        return RedirectResponse("ui/", status_code=307)

    app.add_route(UI_URL, ui_without_slash, methods=["GET"], include_in_schema=False)
    app.mount(UI_URL, StaticFiles(directory=UI_DIR, html=True), name="ui")


# ReDoc's side menu always shows Redocly's logo from their CDN (no option turns it off). Offline that
# image fails to load, so the bundle is served with an empty image in its place.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@functools.cache
def redoc_bundle() -> bytes:
    return (DOCS_ASSETS_DIR / "redoc.standalone.js").read_text(encoding="utf-8").replace(REDOC_LOGO, EMPTY_IMAGE).encode()


def install_docs(app: FastAPI) -> None:
    async def redoc_js(request: Request) -> Response:
        return Response(redoc_bundle(), media_type="text/javascript; charset=utf-8")

    # Before the mount, which would otherwise serve the file as shipped.
    app.add_route(f"{DOCS_ASSETS_URL}/redoc.standalone.js", redoc_js, methods=["GET"], include_in_schema=False)
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}", init_oauth=app.swagger_ui_init_oauth,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS})

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)

    app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_route(oauth2_redirect_url, swagger_ui_redirect, methods=["GET"], include_in_schema=False)
    app.add_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
