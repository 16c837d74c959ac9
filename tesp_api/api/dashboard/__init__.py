"""The task dashboard at ``/dashboard``: plain HTML, one stylesheet and one script, all in this
package (no CDN, no font, no build chain). See docs/dashboard.md.

The page itself holds no data and is served to anyone; the script reads everything through the TES
API with the caller's credentials (the browser's Basic prompt, a Basic form, or a pasted bearer
token), so a user sees exactly the tasks the API scopes to them. Two small helpers that TES has no
operation for live under ``/dashboard/api`` (not in the OpenAPI document): ``config`` (which sign-in
methods to offer, public) and ``owners`` (who submitted which task, for administrators only: TES
answers never carry the owner).

Every value shown comes from untrusted task submitters: the script only ever sets ``textContent``,
and the page is served with a Content-Security-Policy that allows nothing but this service's own
script and style (no inline script, no other origin), so an injected tag cannot run.
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from tesp_api.api.admin import server_health
from tesp_api.api.deps import Principal, current_principal
from tesp_api.api.errors import TesHttpError
from tesp_api.auth.effective import effective_auth_settings
from tesp_api.config.settings import Settings
from tesp_api.metrics import LAST_CONTACT
from tesp_api.store.port import Owner, TaskStore
from tesp_api.tes.ids import is_safe_id

DASHBOARD_URL = "/dashboard"
STATIC_URL = "/dashboard/static"
MAX_OWNER_IDS = 256

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_dir() -> Path:
    return Path(str(files("tesp_api.api.dashboard") / "static"))


def owner_label(owner: Owner | None) -> str:
    """What an administrator sees in the Owner column (Basic users: the username)."""
    if owner is None:
        return ""
    if owner.issuer in ("", "basic"):
        return owner.subject
    return f"{owner.subject} ({owner.issuer})"


def _page(root: str, api_base: str) -> str:
    template = (static_dir() / "index.html").read_text(encoding="utf-8")
    return template.replace("{{ROOT}}", html.escape(root, quote=True)).replace(
        "{{API}}", html.escape(root + api_base, quote=True)
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def install_dashboard(app: FastAPI, settings: Settings, store: TaskStore, *, api_base: str) -> None:
    """Mount the page, its assets and its two helper endpoints on ``app``."""
    auth = effective_auth_settings(settings)
    router = APIRouter(include_in_schema=False)

    async def page(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return HTMLResponse(_page(root, api_base), headers=PAGE_HEADERS)

    async def task_page(request: Request, task_id: str) -> HTMLResponse:
        return await page(request)

    async def config() -> dict[str, Any]:
        """Which sign-in the page offers; public, like the modes in the OpenAPI document."""
        modes = [m for m in ("basic", "oidc") if m in auth.mode]
        return {"auth_modes": modes, "api_base": api_base}

    async def whoami(request: Request, prompt: bool = False) -> dict[str, Any]:
        """Who the page's credentials are. Without ``prompt`` a 401 carries no WWW-Authenticate, so
        the browser shows no Basic dialog and the page offers its own sign-in (form, token, or a
        button that asks again with ``prompt=1``: then the browser's own dialog appears)."""
        try:
            principal = await current_principal(request)
        except TesHttpError as exc:
            if exc.status_code == 401 and not prompt:
                raise TesHttpError(401, str(exc.detail)) from None
            raise
        return {"user": owner_label(principal.owner) or None, "admin": principal.is_admin}

    async def owners(
        principal: PrincipalDep,
        task_id: Annotated[list[str] | None, Query(alias="id")] = None,
    ) -> dict[str, str]:
        """Owner of each task id (at most 256), for administrators; TES answers never carry it."""
        if not principal.is_admin:
            raise TesHttpError(403, "only administrators see task owners")
        ids = task_id or []
        if len(ids) > MAX_OWNER_IDS:
            raise TesHttpError(400, f"id: at most {MAX_OWNER_IDS} task ids")
        found: dict[str, str] = {}
        for one in dict.fromkeys(ids):
            record = await store.get(one, None) if is_safe_id(one) else None
            if record is not None:
                found[one] = owner_label(record.owner)
        return found

    async def pulsar(principal: PrincipalDep) -> list[dict[str, Any]]:
        """The Pulsar servers by name and transport, with the outcome of the latest request to
        each: this process's own, else the one an engine published (an API process of
        api.workers runs no engine; admin.server_health). REST only: AMQP servers answer through
        the broker ("unknown"). Never a URL."""
        published = {
            name: view.contacts.get(name) for name, (view, _) in (await server_health(store)).items()
        }
        servers: list[dict[str, Any]] = []
        for server in settings.pulsar.effective_servers():
            contact = LAST_CONTACT.get(server.name) or published.get(server.name)
            servers.append(
                {
                    "name": server.name,
                    "transport": "amqp" if server.amqp_url else "rest",
                    "health": "unknown" if contact is None else contact.outcome,
                    "last_contact": None if contact is None else contact.at,
                }
            )
        return servers

    router.add_api_route(DASHBOARD_URL, page, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/", page, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/service", page, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/tasks/{{task_id}}", task_page, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/api/config", config, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/api/whoami", whoami, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/api/owners", owners, methods=["GET"])
    router.add_api_route(f"{DASHBOARD_URL}/api/pulsar", pulsar, methods=["GET"])
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=static_dir()), name="dashboard-static")
