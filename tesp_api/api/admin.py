"""Operator views of fair quotas and routing (docs/quotas.md).

* ``GET /admin/servers`` (also under the TES prefixes): every configured Pulsar server with its
  limits, its load (tasks holding a slot there, counted in the store over all workers) and its
  health as the engines published it (``server_health``). Administrators only
  (``Principal.is_admin``): 403 for anybody else.
* ``queue_notes``: the computed ``system_logs`` lines of a QUEUED task in the FULL view, saying why it
  waits (its owner is at the quota, or every server that could take it is full or down). Computed
  when the task is read, from the store's counters: a claim writes nothing per waiting task.

Nothing here imports the engine (docs/architecture.md, enforced by the import-linter contracts):
the rules are the domain's (``tes/servers.py``), the load is the store's, and the health is what
each engine publishes through the store (``store/snapshots.py``). So every process answers the
same: the one running the engine, an API process of ``api.workers`` and an API-only replica.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from tesp_api.api.deps import Principal, current_principal
from tesp_api.api.errors import TesHttpError
from tesp_api.config.settings import Settings
from tesp_api.store.port import TaskRecord, TaskStore
from tesp_api.store.snapshots import snapshots_of
from tesp_api.tes.models import TesState
from tesp_api.tes.servers import (
    HEALTH_KIND,
    HealthView,
    ServerHealth,
    current_health,
    server_limits,
    wanted_server,
)
from tesp_api.tes.validate import server_fit_problem

ADMIN_SERVERS_PATHS = ("/admin/servers", "/ga4gh/tes/v1/admin/servers")


async def server_health(store: TaskStore) -> dict[str, tuple[HealthView, ServerHealth]]:
    """Per server, the newest fresh health an engine published (a server missing: not known)."""
    snapshots = snapshots_of(store)
    if snapshots is None:
        return {}
    views = [
        HealthView.from_payload(s.holder, s.published_at.timestamp(), s.payload)
        for s in await snapshots.read(HEALTH_KIND)
    ]
    return current_health(views, time.time())


async def queue_notes(settings: Settings, store: TaskStore, record: TaskRecord) -> list[str]:
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
    servers = {s.name: s for s in settings.pulsar.effective_servers()}
    limits = {limit.name: limit for limit in server_limits(servers.values())}
    health = await server_health(store)
    pinned = wanted_server(record.task)
    names = [pinned] if pinned in servers else list(servers)
    fitting = [n for n in names if server_fit_problem(limits[n], record.task.resources) is None]

    def down(name: str) -> bool:
        return name in health and not health[name][1].up

    open_ = [
        n
        for n in fitting
        if (not servers[n].max_active or usage.servers.get(n, 0) < servers[n].max_active) and not down(n)
    ]
    if fitting and not open_:
        parts = []
        for n in fitting:
            if down(n):
                parts.append(f"{n}: down")
            else:
                parts.append(f"{n}: {usage.servers.get(n, 0)}/{servers[n].max_active} active (max_active)")
        notes.append("waiting for a Pulsar server: " + "; ".join(parts))
    return notes


async def servers_report(settings: Settings, store: TaskStore) -> dict[str, Any]:
    """GET /admin/servers: every server with its limits, the store's load and the published health
    (``up`` and the rest null when no engine published a fresh view of it)."""
    usage = await store.quota_usage(None)
    health = await server_health(store)
    servers: list[dict[str, Any]] = []
    for server in settings.pulsar.effective_servers():
        view, state = health.get(server.name, (None, None))
        servers.append(
            {
                "name": server.name,
                "transport": server.transport,
                "up": state.up if state else None,
                "consecutive_failures": state.failures if state else None,
                "last_error": state.last_error if state else None,
                "last_change": state.last_change if state else None,
                "last_probe": state.last_probe if state else None,
                "health_from": view.holder if view else None,
                "health_published": view.published_at if view else None,
                "active": usage.servers.get(server.name, 0),
                "max_active": server.max_active or None,
                "max_cpu_cores": server.max_cpu_cores,
                "max_ram_gb": server.max_ram_gb,
            }
        )
    newest = max((view for view, _ in health.values()), key=lambda v: v.published_at, default=None)
    return {"health_from": newest.holder if newest else None, "servers": servers}


def install_admin(app: FastAPI, settings: Settings, store: TaskStore) -> None:
    async def admin_servers(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> dict[str, Any]:
        """Pulsar servers with health and load (administrators only)."""
        if not principal.is_admin:
            raise TesHttpError(403, "administrators only")
        return await servers_report(settings, store)

    for path in ADMIN_SERVERS_PATHS:
        app.add_api_route(path, admin_servers, methods=["GET"], include_in_schema=False, response_model=None)
