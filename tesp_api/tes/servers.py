"""The pure rules about Pulsar servers that both the API and the engine need (docs/quotas.md).

Why a module of its own, in the domain: the API decides things about servers too (the 400 for a
task no server fits, the FULL view's "why it waits" line, GET /admin/servers), and it must not
import the engine for them (docs/architecture.md; the import-linter contracts in pyproject.toml
enforce it). So the rules live here, stdlib only, and ``engine/routing.py`` uses them as well:

* ``wanted_server``: a task's ``pulsar_server`` backend parameter (it pins the task);
* ``server_limits``: the configured servers as admission sees them (``ServerLimits``);
* ``ServerHealth``: one server as one worker sees it, and ``HealthView``, the health one engine
  publishes through the store (``store/snapshots.py``) for every process: with ``api.workers``
  the API processes run no engine, and an API-only replica none either, so they read what the
  engines published (``current_health``), never a process-local guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tesp_api.tes.models import TesTask
from tesp_api.tes.validate import ServerLimits

HEALTH_KIND = "pulsar_health"  # the snapshot kind engines publish their server health under


def wanted_server(task: TesTask) -> str | None:
    """The task's ``pulsar_server`` backend parameter (key case-insensitive), if any."""
    params = (task.resources.backend_parameters if task.resources else None) or {}
    value = next((v for k, v in params.items() if k.lower() == "pulsar_server"), None)
    return str(value) if value is not None else None


class DeclaredServer(Protocol):
    """What ``server_limits`` reads of a configured server (``config.settings.PulsarServer``)."""

    @property
    def name(self) -> str: ...

    @property
    def max_cpu_cores(self) -> int | None: ...

    @property
    def max_ram_gb(self) -> float | None: ...


def server_limits(servers: Iterable[DeclaredServer]) -> tuple[ServerLimits, ...]:
    """The servers as validate.py sees them (names and resource limits)."""
    return tuple(ServerLimits(s.name, s.max_cpu_cores, s.max_ram_gb) for s in servers)


@dataclass(slots=True)
class ServerHealth:
    """One server as one worker sees it."""

    name: str
    up: bool = True  # unknown counts as up: a fresh worker does not wait for its first probe
    failures: int = 0  # in a row
    last_error: str | None = None
    last_change: float | None = None  # time.time() of the last up/down change
    last_probe: float | None = None  # time.time() of the last probe

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ServerHealth:
        """Read back what ``asdict`` wrote; a field of the wrong type (another version's
        snapshot) falls back to its default rather than failing the admin page."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        failures = data.get("failures")
        error = data.get("last_error")
        return cls(
            name=name,
            up=bool(data.get("up", True)),
            failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else 0,
            last_error=error if isinstance(error, str) else None,
            last_change=number("last_change"),
            last_probe=number("last_probe"),
        )


@dataclass(frozen=True, slots=True)
class Contact:
    """The outcome of a worker's latest request to a server (``metrics.LAST_CONTACT``: ok,
    client_error, server_error, error), the dashboard's "health" column."""

    outcome: str
    at: float  # time.time()


@dataclass(frozen=True, slots=True)
class HealthView:
    """The server health one worker published: who, when, how often it publishes, and what it saw."""

    holder: str  # the worker id
    published_at: float  # time.time()
    interval: float  # seconds between its publications
    servers: Mapping[str, ServerHealth]
    contacts: Mapping[str, Contact] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON object stored in the snapshot (holder and time are the snapshot's own)."""
        return {
            "interval": self.interval,
            "servers": {n: asdict(s) for n, s in self.servers.items()},
            "contacts": {n: asdict(c) for n, c in self.contacts.items()},
        }

    @classmethod
    def from_payload(cls, holder: str, published_at: float, payload: Mapping[str, Any]) -> HealthView:
        interval = payload.get("interval")
        return cls(
            holder=holder,
            published_at=published_at,
            interval=float(interval) if isinstance(interval, int | float) and interval > 0 else 10.0,
            servers={n: ServerHealth.from_json(n, s) for n, s in _objects(payload.get("servers"))},
            contacts={
                n: Contact(c["outcome"], float(c["at"]))
                for n, c in _objects(payload.get("contacts"))
                if isinstance(c.get("outcome"), str) and isinstance(c.get("at"), int | float)
            },
        )

    def stale_after(self) -> float:
        """The age beyond which this view no longer counts: its worker missed three publications
        (stopped, crashed, or cut off from the store), so what it saw says nothing about now."""
        return 3 * self.interval + 5.0

    def is_fresh(self, now: float) -> bool:
        return math.isfinite(self.published_at) and now - self.published_at <= self.stale_after()


def _objects(value: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """The (name, object) pairs of a JSON object of objects; anything else is skipped."""
    if not isinstance(value, Mapping):
        return []
    return [(str(n), v) for n, v in value.items() if isinstance(v, Mapping)]


def current_health(views: Iterable[HealthView], now: float) -> dict[str, tuple[HealthView, ServerHealth]]:
    """Per server, the latest fresh view of it and what it says. Each worker acts on its own view
    (it is what that worker can reach); an operator is shown the newest one. A server no fresh
    view mentions is missing: its health is not known."""
    out: dict[str, tuple[HealthView, ServerHealth]] = {}
    for view in sorted((v for v in views if v.is_fresh(now)), key=lambda v: v.published_at):
        for name, state in view.servers.items():
            out[name] = (view, state)  # a newer view replaces an older one
    return out
