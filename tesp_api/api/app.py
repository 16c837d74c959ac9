"""The FastAPI application: TES routes under /ga4gh/tes/v1 and /v1, TES-shaped errors, body limit.

``create_app`` only wires given parts together; opening the store and running the engine is the
composition root's job (tesp_api/service.py), so tests can build an app around any store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

import tesp_api
from tesp_api.api.admin import install_admin
from tesp_api.api.cors import TesCorsMiddleware
from tesp_api.api.dashboard import install_dashboard
from tesp_api.api.docs_assets import SWAGGER_URL, install_docs
from tesp_api.api.errors import install_error_handlers
from tesp_api.api.head import HeadAsGetMiddleware
from tesp_api.api.limits import BodySizeLimitMiddleware
from tesp_api.api.metrics import install_metrics
from tesp_api.api.openapi import install_openapi
from tesp_api.api.routes import TaskEndpoints, build_router
from tesp_api.auth.authenticator import Authenticator, build_authenticator
from tesp_api.config.settings import Settings
from tesp_api.store.port import TaskStore

# Clients disagree on the base path (py-tes 1.x: /ga4gh/tes/v1; py-tes 0.4, Nextflow, Pulsar: /v1).
PRIMARY_PREFIX = "/ga4gh/tes/v1"
ALIAS_PREFIXES = ("/v1",)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _authenticator_from_settings(
    settings: Settings, lifespan: Lifespan | None
) -> tuple[Authenticator | None, Lifespan | None]:
    built = build_authenticator(settings)
    if not built.enabled:
        return None, lifespan

    @asynccontextmanager
    async def closing(app: FastAPI) -> AsyncIterator[None]:
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await built.aclose()  # its HTTP client to the OIDC issuers

    return built, closing


def create_app(
    settings: Settings,
    store: TaskStore,
    *,
    engine: Any | None = None,
    authenticator: Any | None = None,
    lifespan: Lifespan | None = None,
) -> FastAPI:
    """The TES application around an already opened ``store``.

    ``engine`` (optional) is told about cancels at once; ``authenticator`` is kept on
    ``app.state`` for :func:`tesp_api.api.deps.current_principal`; ``lifespan`` lets the composition
    root open and close things with the app.
    """
    if authenticator is None:
        # Built here from the settings (None when auth.mode is "none"), and closed with the app.
        authenticator, lifespan = _authenticator_from_settings(settings, lifespan)
    app = FastAPI(
        title="tesp-api",
        description="GA4GH Task Execution Service 1.1 running tasks on Galaxy Pulsar",
        version=tesp_api.__version__,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN: install_docs serves packaged ones
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.engine = engine
    app.state.authenticator = authenticator
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.api.max_body_bytes)
    app.add_middleware(HeadAsGetMiddleware)  # HEAD = GET without the body, on every GET endpoint
    if settings.api.cors_origins:  # outermost, so that errors (413...) carry the CORS headers too
        app.add_middleware(TesCorsMiddleware, origins=settings.api.cors_origins)

    endpoints = TaskEndpoints(settings, store, engine)
    # Added to the app's own router, not included (see build_router: included routers match twice).
    build_router(endpoints, prefix=PRIMARY_PREFIX, router=app.router)
    for prefix in ALIAS_PREFIXES:
        build_router(endpoints, include_in_schema=False, prefix=prefix, router=app.router)
    # Nextflow asks {url}/service-info.
    app.add_api_route(
        "/service-info",
        endpoints.get_service_info,
        methods=["GET"],
        include_in_schema=False,
        response_model=None,
    )

    async def root() -> RedirectResponse:
        return RedirectResponse(url=SWAGGER_URL)

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    install_docs(app)
    install_dashboard(app, settings, store, api_base=PRIMARY_PREFIX)
    install_admin(app, settings, store)  # GET /admin/servers (docs/quotas.md)
    if settings.api.metrics:
        install_metrics(app, store)
    install_openapi(app)
    return app
