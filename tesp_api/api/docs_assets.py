"""Swagger UI (``/docs``, ``/`` redirects there) and ReDoc (``/redoc``) served offline.

FastAPI's own pages load their JavaScript and CSS from cdn.jsdelivr.net and the favicon from
fastapi.tiangolo.com, so on an air-gapped site (many HPC sites) they render blank. The assets come
from the ``fastapi-offline`` package (MIT; it ships Swagger UI 5 and ReDoc 2 bundles, both of which
render OpenAPI 3.1, unlike swagger-ui-bundle 1.1.0's Swagger UI 4.15) and are served from
``/static/docs``; only the HTML is built here. See docs/api.md "Documentation pages".
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC_URL = "/static/docs"
SWAGGER_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# The pages may load nothing from elsewhere: the browser itself refuses (ReDoc always shows a
# Redocly logo from cdn.redoc.ly; blocked, it hides it). Swagger UI's page has an inline script, and
# both inject styles; ReDoc runs its search in a blob: worker.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'self'"
)
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

# Swagger UI's defaults that reach out: validatorUrl sends the document to validator.swagger.io and
# shows its badge. ``null`` turns it off.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True, "displayRequestDuration": True}


def docs_static_dir() -> Path:
    """The directory of the packaged Swagger UI / ReDoc bundles (from fastapi-offline)."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Mount the bundles and add the two documentation pages (and the favicon) to ``app``.

    ``app`` must be created with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are off.
    """
    static_dir = docs_static_dir()
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=static_dir), name="docs-static")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_swagger_ui_html(
            openapi_url=f"{base}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{base}{DOCS_STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_STATIC_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        page.headers.update(DOCS_HEADERS)
        return page

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_redoc_html(
            openapi_url=f"{base}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{DOCS_STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{DOCS_STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(DOCS_HEADERS)
        return page

    async def favicon() -> FileResponse:
        return FileResponse(static_dir / "favicon.png", media_type="image/png")

    app.add_api_route(SWAGGER_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(REDOC_URL, redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False)
