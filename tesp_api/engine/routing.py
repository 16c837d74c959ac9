"""Which Pulsar server runs a task: capacity- and health-aware routing (docs/quotas.md, "Routing").

The decision is made in the store, when a QUEUED task is claimed (``TaskStore.claim(policy=...)``):
this module only supplies the policy. ``Router.claim_policy()`` gives the store

* the owners' limits (``quotas.max_active_per_user``, ``quotas.per_user``) and the servers' limits
  (``pulsar.servers[].max_active``), which the store enforces atomically over every worker;
* ``route(record, loads)``: the servers that may take the task, best first, from the store's own
  count of active tasks per server (all workers, not this process): a task's ``pulsar_server``
  backend parameter pins it to that server; otherwise every server that is up, has room and fits
  the task's ``cpu_cores``/``ram_gb`` (``max_cpu_cores``/``max_ram_gb``), ordered by
  ``pulsar.routing``: ``least_loaded`` (default) the least loaded relative to its capacity first
  (``max_active``, or ``engine.max_running_tasks`` for a server without one); ``tightest_fit`` the
  smallest declared limits first (cores, then RAM; a limit not declared is the largest), ties by
  that load, so a Slurm manager per resource class gets the tasks of its class.

Health: each worker probes every server every ``pulsar.health.probe_interval`` seconds (REST:
``GET /healthz``; a backend without a probe, AMQP, is judged by its requests only) and counts the
outcome of real requests; ``pulsar.health.failures_to_down`` failures in a row mark a server down,
one success marks it up. A down server is offered no new tasks. A task already given to a server
that is down, but not submitted there yet (no ``backend.submitting``), moves to a healthy one: its
``status``/``prepare`` calls are made through ``RoutedBackend``, which gives up waiting for the
down server and records the new one in the store (``backend.server``; a system_logs line says so).
A task submitted to a server stays with it (moving it could run it twice).

Health is per process (each worker probes for itself): the state a worker acts on is its own
view, which is what it can reach. Each worker also publishes that view through the store
(``store/snapshots.py``, kind ``pulsar_health``) after every probe round and at every up/down
change, because the processes that show health (API processes with ``api.workers``, API-only
replicas) run no engine: ``api/admin.py`` reads the published views, never this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tesp_api.config.settings import PulsarServer, Settings
from tesp_api.metrics import LAST_CONTACT
from tesp_api.pulsar.port import BackendUnavailable, JobSpec, JobStatus, PulsarBackend
from tesp_api.store.port import ClaimPolicy, LogPatch, TaskRecord, TaskStore
from tesp_api.store.snapshots import snapshots_of
from tesp_api.tes.models import TesState
from tesp_api.tes.servers import HEALTH_KIND, Contact, HealthView, ServerHealth, server_limits, wanted_server
from tesp_api.tes.validate import server_fit_problem

log = logging.getLogger(__name__)
T = TypeVar("T")


class Router:
    """The routing policy, server health and probe loop of one engine (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        backends: Callable[[], Mapping[str, PulsarBackend]],
        worker_id: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self._backends = backends
        self.worker_id = worker_id
        self.servers: dict[str, PulsarServer] = {s.name: s for s in settings.pulsar.effective_servers()}
        self.health = {name: ServerHealth(name) for name in self.servers}
        self._changed = asyncio.Event()  # set (and replaced) at every up/down change
        self._probe: asyncio.Task[None] | None = None
        self._limits = {limits.name: limits for limits in server_limits(self.servers.values())}
        self._publishing: asyncio.Task[None] | None = None  # a publication after an up/down change
        self._republish = False  # a change came while _publishing ran

    # ---- health --------------------------------------------------------------------------------
    def is_up(self, name: str) -> bool:
        state = self.health.get(name)
        return state is not None and state.up

    def record(self, name: str, ok: bool, error: str | None = None) -> None:
        """The outcome of a probe or a real request to ``name``."""
        state = self.health.get(name)
        if state is None:
            return
        if ok:
            state.failures = 0
            if not state.up:
                log.warning("Pulsar server %s is up again", name)
                self._set(state, True)
            return
        state.failures += 1
        state.last_error = error
        if state.up and state.failures >= self.settings.pulsar.health.failures_to_down:
            log.warning("Pulsar server %s is down (%s): no new tasks go there", name, error)
            self._set(state, False)

    def _set(self, state: ServerHealth, up: bool) -> None:
        state.up = up
        state.last_change = time.time()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._publish_soon()

    def _publish_soon(self) -> None:
        """Publish a change now, not at the next round (other processes act on it: the API's
        views). A change during a publication is published again right after it."""
        if self._probe is None:
            return  # not started (a router used only for its policy)
        if self._publishing is not None and not self._publishing.done():
            self._republish = True
            return
        self._publishing = asyncio.create_task(self._publish_changes(), name="engine-health-publish")

    async def _publish_changes(self) -> None:
        self._republish = True
        while self._republish:
            self._republish = False
            await self.publish()

    async def wait_change(self, timeout: float) -> None:
        """Until a server goes up or down (or ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def probe_once(self) -> None:
        """Probe every server that has a probe (REST: GET /healthz), all at once."""
        timeout = self.settings.pulsar.health.probe_timeout

        async def one(name: str, backend: PulsarBackend) -> None:
            healthz = getattr(backend, "healthz", None)
            if healthz is None:
                return
            self.health[name].last_probe = time.time()
            try:
                await asyncio.wait_for(healthz(), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the probe is "not healthy"
                self.record(name, False, f"probe failed: {type(exc).__name__}: {exc}"[:300])
            else:
                self.record(name, True)

        backends = self._backends()
        await asyncio.gather(*(one(n, b) for n, b in backends.items() if n in self.health))

    def publish_interval(self) -> float:
        """Seconds between publications of this worker's health: the probe interval, or 10 s
        without probes (the publication is also the sign that this worker is alive)."""
        return self.settings.pulsar.health.probe_interval or 10.0

    def view(self) -> HealthView:
        """This worker's health as it is published (``tes/servers.py``)."""
        contacts = {
            name: Contact(contact.outcome, contact.at)
            for name, contact in LAST_CONTACT.items()
            if name in self.servers
        }
        return HealthView(self.worker_id, time.time(), self.publish_interval(), dict(self.health), contacts)

    async def publish(self) -> None:
        """Write this worker's view to the store for every other process (``store/snapshots.py``)."""
        snapshots = snapshots_of(self.store)
        if snapshots is None:
            return
        try:
            await snapshots.publish(HEALTH_KIND, self.worker_id, self.view().payload(), datetime.now(UTC))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store is down: the next round publishes again
            log.warning("publishing the Pulsar servers' health failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        """Probe (when ``pulsar.health.probe_interval`` > 0) and publish, every interval."""
        if self._probe is None:
            self._probe = asyncio.create_task(self._probe_loop(), name="engine-probe")

    async def aclose(self) -> None:
        for task in (self._probe, self._publishing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe = self._publishing = None

    async def _probe_loop(self) -> None:
        probing = self.settings.pulsar.health.probe_interval > 0
        while True:
            try:
                if probing:
                    await self.probe_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probing the Pulsar servers failed")
            await self.publish()
            await asyncio.sleep(self.publish_interval())

    # ---- the policy ----------------------------------------------------------------------------
    def claim_policy(self) -> ClaimPolicy:
        quotas = self.settings.quotas
        return ClaimPolicy(
            max_active_per_owner=quotas.max_active_per_user,
            owner_overrides=dict(quotas.per_user),
            server_limits={n: s.max_active for n, s in self.servers.items() if s.max_active},
            route=self.route,
        )

    def capacity(self, name: str) -> int:
        return self.servers[name].max_active or self.settings.engine.max_running_tasks

    def route(self, record: TaskRecord, loads: Mapping[str, int]) -> Sequence[str]:
        """The servers that may take ``record`` now, best first (see the module docstring)."""
        pinned = wanted_server(record.task)
        names = [pinned] if pinned is not None and pinned in self.servers else list(self.servers)
        resources = record.task.resources
        fitting = [
            n
            for n in names
            if self.is_up(n)
            and (not self.servers[n].max_active or loads.get(n, 0) < self.servers[n].max_active)
            and server_fit_problem(self._limits[n], resources) is None
        ]
        order = {n: i for i, n in enumerate(self.servers)}
        if self.settings.pulsar.routing == "tightest_fit":
            return sorted(
                fitting, key=lambda n: (*self.size(n), loads.get(n, 0) / self.capacity(n), order[n])
            )
        return sorted(fitting, key=lambda n: (loads.get(n, 0) / self.capacity(n), order[n]))

    def size(self, name: str) -> tuple[float, float]:
        """A server's declared limits for ``tightest_fit``, smallest first: cores, then RAM. A limit
        not declared counts as the largest (the server takes anything), so a declared class of the
        same cores but less RAM, or fewer cores, comes before it."""
        server = self.servers[name]
        cores = float(server.max_cpu_cores) if server.max_cpu_cores is not None else float("inf")
        ram = float(server.max_ram_gb) if server.max_ram_gb is not None else float("inf")
        return cores, ram

    def choose_server(self, record: TaskRecord, local_loads: Mapping[str, int]) -> str:
        """The server of a task being started: the one the claim assigned (backend.server), else
        (a store record from before routing, or a claim without a policy) the best by ``route`` on
        this worker's own counts, else the pinned or first configured server."""
        assigned = record.backend.get("server")
        if isinstance(assigned, str) and assigned in self.servers:
            return assigned
        best = self.route(record, local_loads)
        if best:
            return best[0]
        pinned = wanted_server(record.task)
        return pinned if pinned in self.servers else next(iter(self.servers))

    def backend_for(self, record: TaskRecord) -> PulsarBackend:
        """The backend for ``record``'s calls: a ``RoutedBackend`` that follows a reroute."""
        return RoutedBackend(self, record)

    def reroute_target(self, record: TaskRecord, current: str) -> str | None:
        """A healthy server for a not-yet-submitted task whose server ``current`` is down."""
        if wanted_server(record.task) == current:
            return None  # pinned: it waits for its server
        loads: dict[str, int] = {}
        candidates = [n for n in self.route(record, loads) if n != current]
        return candidates[0] if candidates else None


def not_submitted(record: TaskRecord) -> bool:
    """Nothing was handed to Pulsar to run yet: the task may still move to another server."""
    return (
        record.state in (TesState.QUEUED, TesState.INITIALIZING)
        and not record.backend.get("submitting")
        and not record.backend.get("submitted")
    )


class RoutedBackend:
    """The backend of a task's current server, for one call. ``status`` and ``prepare`` of a task
    not submitted yet are raced against its server going down: then the task moves to a healthy
    server (recorded in the store) and the call is made there. Every outcome feeds the health."""

    def __init__(self, router: Router, record: TaskRecord) -> None:
        self._router = router
        self._record = record
        self.name = self._server()

    def _server(self) -> str:
        name = self._record.backend.get("server")
        if isinstance(name, str) and name in self._router.servers:
            return name
        return self._router.choose_server(self._record, {})

    def _backend(self) -> PulsarBackend:
        return self._router._backends()[self._server()]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend(), attr)

    async def _call(self, what: str, fn: Callable[[PulsarBackend], Awaitable[T]], movable: bool) -> T:
        router = self._router
        while True:
            name = self._server()
            if movable and not_submitted(self._record) and not router.is_up(name) and await self._move(name):
                continue
            call = asyncio.ensure_future(fn(router._backends()[name]))
            if movable and not_submitted(self._record) and router.is_up(name):
                watch = asyncio.ensure_future(self._until_down(name))
                try:
                    await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    watch.cancel()
                if not call.done():  # the server went down while we waited for it
                    call.cancel()
                    with contextlib.suppress(BaseException):
                        await call
                    continue
            try:
                result = await call
            except BackendUnavailable as exc:
                router.record(name, False, str(exc)[:300])
                raise
            router.record(name, True)
            return result

    async def _until_down(self, name: str) -> None:
        while self._router.is_up(name):
            await self._router.wait_change(3600)

    async def _move(self, current: str) -> bool:
        """Move the task off the down server ``current``; False (after waiting for a change of
        health) when no other server can take it."""
        router = self._router
        target = router.reroute_target(self._record, current)
        if target is None:
            await router.wait_change(router.settings.pulsar.health.probe_interval or 10.0)
            return router.is_up(current)
        line = f"Pulsar server {current} is down; the task (not submitted yet) moves to {target}"
        log.warning("%s", line)
        updated = await router.store.update(
            self._record.id,
            backend={"server": target, "moved_from": current},
            log=LogPatch(system_logs=[line]),
            lease_owner=router.worker_id,
        )
        if updated is None:
            raise BackendUnavailable(f"Pulsar server {current} is down and the task could not be moved")
        self._record.backend["server"] = target
        self._record.backend["moved_from"] = current
        return True

    # ---- PulsarBackend ---------------------------------------------------------------------------
    async def prepare(self, spec: JobSpec) -> None:
        await self._call("prepare", lambda b: b.prepare(spec), movable=True)

    async def submit(self, spec: JobSpec) -> None:
        await self._call("submit", lambda b: b.submit(spec), movable=False)

    async def status(self, job_id: str) -> JobStatus:
        return await self._call("status", lambda b: b.status(job_id), movable=True)

    async def cancel(self, job_id: str) -> None:
        await self._call("cancel", lambda b: b.cancel(job_id), movable=False)

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        return await self._call("fetch", lambda b: b.fetch(job_id, name, dest), movable=False)

    async def clean(self, job_id: str) -> None:
        await self._call("clean", lambda b: b.clean(job_id), movable=False)

    async def aclose(self) -> None:  # the engine closes the real backends
        return None
