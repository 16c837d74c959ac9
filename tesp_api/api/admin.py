"""Operator views of fair quotas and routing (docs/quotas.md).

* ``GET /admin/servers`` (also under the TES prefixes): every configured Pulsar server with its
  health (as this process's engine sees it), limits and load (tasks holding a slot there, counted in
  the store over all workers). Administrators only (``Principal.is_admin``): 403 for anybody else.
* ``queue_notes``: the computed ``system_logs`` lines of a QUEUED task in the FULL view, saying why it
  waits (its owner is at the quota, or every server that could take it is full or down). Computed
  when the task is read, from the store's counters: a claim writes nothing per waiting task.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI

from tesp_api.api.deps import Principal, current_principal
from tesp_api.api.errors import TesHttpError
from tesp_api.config.settings import Settings
from tesp_api.engine.routing import Router, wanted_server
from tesp_api.store.port import TaskRecord, TaskStore
from tesp_api.tes.models import TesState
from tesp_api.tes.validate import server_fit_problem

ADMIN_SERVERS_PATHS = ("/admin/servers", "/ga4gh/tes/v1/admin/servers")


def _router(settings: Settings, store: TaskStore, engine: Any | None) -> tuple[Router, bool]:
    """The engine's router (with its health), or one without backends (health unknown)."""
    router = getattr(engine, "router", None)
    if isinstance(router, Router):
        return router, True
    return Router(settings, store, dict, worker_id="api"), False


async def queue_notes(
    settings: Settings, store: TaskStore, engine: Any | None, record: TaskRecord
) -> list[str]:
    """Why a QUEUED task has not started (empty when nothing holds it back but the queue itself)."""
    if record.state != TesState.QUEUED or record.lease_owner is not None:
        return []
    usage = await store.quota_usage(record.owner)
    notes: list[str] = []
    subject = record.owner.subject if record.owner is not None else None
    limit = settings.quotas.limit_for(subject)
    if limit and usage.owner_active >= limit:
        where = "quotas.per_user" if subject in settings.quotas.per_user else "quotas.max_active_per_user"
        notes.append(
            f"waiting for a quota: this owner has {usage.owner_active} task(s) INITIALIZING or RUNNING, "
            f"the limit is {limit} ({where}); {usage.owner_queued} task(s) of this owner wait"
        )
    router, with_health = _router(settings, store, engine)
    pinned = wanted_server(record.task)
    names = [pinned] if pinned in router.servers else list(router.servers)
    fitting = [n for n in names if server_fit_problem(router._limits[n], record.task.resources) is None]
    open_ = [
        n
        for n in fitting
        if (not router.servers[n].max_active or usage.servers.get(n, 0) < router.servers[n].max_active)
        and (not with_health or router.is_up(n))
    ]
    if fitting and not open_:
        parts = []
        for n in fitting:
            if with_health and not router.is_up(n):
                parts.append(f"{n}: down")
            else:
                parts.append(
                    f"{n}: {usage.servers.get(n, 0)}/{router.servers[n].max_active} active (max_active)"
                )
        notes.append("waiting for a Pulsar server: " + "; ".join(parts))
    return notes


def install_admin(app: FastAPI, settings: Settings, store: TaskStore, engine: Any | None) -> None:
    async def admin_servers(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> dict[str, Any]:
        """Pulsar servers with health and load (administrators only)."""
        if not principal.is_admin:
            raise TesHttpError(403, "administrators only")
        router, with_health = _router(settings, store, getattr(app.state, "engine", engine))
        servers = await router.report()
        if not with_health:
            for server in servers:
                server["up"] = None  # no engine in this process: its health is not known here
        return {"health_from": "engine" if with_health else None, "servers": servers}

    for path in ADMIN_SERVERS_PATHS:
        app.add_api_route(path, admin_servers, methods=["GET"], include_in_schema=False, response_model=None)
