"""The engine: claims active tasks from the store with a lease and drives each one (driver.py).

Runs inside `tesp-api serve` (``engine.enabled``) and as separate `tesp-api worker` processes, any
number of them on one store: a task is driven only by the worker holding its lease, which is
renewed every ``lease_seconds / 3``; a crashed worker's tasks are claimed by another once their
lease expires, and driven on from the state the store records. It never imports FastAPI.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tesp_api import log_context
from tesp_api.config.settings import Settings
from tesp_api.engine.context import DriverContext, StatsCounters
from tesp_api.engine.driver import TaskDriver
from tesp_api.engine.routing import Router
from tesp_api.engine.runtimes import Runtime, build_runtime
from tesp_api.engine.staging import Staging
from tesp_api.pulsar.factory import build_backends  # re-exported: built in one place (pulsar/factory.py)
from tesp_api.pulsar.port import BackendError, BackendUnavailable, PulsarBackend
from tesp_api.pulsar.retrying import RetryingBackend, RetryPolicy
from tesp_api.store.port import TaskRecord, TaskStore

log = logging.getLogger(__name__)
STOP_TIMEOUT = 15.0  # seconds stop() waits for the loops and drivers to end


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _under_the_policy(backends: dict[str, PulsarBackend], settings: Settings) -> dict[str, PulsarBackend]:
    """Backends given from outside (tests, embedders) get the one retry policy too, as the
    factory's do: the driver itself never retries (docs/engine.md, "Retries")."""
    policy = RetryPolicy.from_settings(settings.pulsar)
    return {
        name: b if isinstance(b, RetryingBackend) else RetryingBackend(b, policy)
        for name, b in backends.items()
    }


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        backends: dict[str, PulsarBackend] | None = None,
        *,
        runtime: Runtime | None = None,
        staging: Staging | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._backends = _under_the_policy(backends, settings) if backends is not None else None
        self._runtime = runtime
        self._staging = staging
        self.worker_id = worker_id or settings.engine.worker_id or default_worker_id()
        self._drivers: dict[str, tuple[TaskDriver, asyncio.Task[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._claim_wake = asyncio.Event()
        self._round_robin = itertools.count()
        self._router: Router | None = None
        self.stats = {"polls": 0, "submits": 0, "claims": 0}

    # ---- wiring --------------------------------------------------------------------------------
    @property
    def backends(self) -> dict[str, PulsarBackend]:
        if self._backends is None:
            self._backends = build_backends(self.settings, self.store)
        return self._backends

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = build_runtime(self.settings.runtime)
        return self._runtime

    @property
    def staging(self) -> Staging:
        if self._staging is None:
            from tesp_api.transfer.egress import EgressPolicy

            egress = EgressPolicy.from_settings(self.settings)  # the SSRF guard knows the control plane
            self._staging = Staging(self.settings.transfer, egress=egress)
        return self._staging

    @property
    def router(self) -> Router:
        """Server choice, health and the claim policy (engine/routing.py, docs/quotas.md)."""
        if self._router is None:
            self._router = Router(self.settings, self.store, lambda: self.backends, self.worker_id)
        return self._router

    def backend_for(self, record: TaskRecord) -> PulsarBackend:
        return self.router.backend_for(record)

    def choose_server(self, record: TaskRecord) -> str:
        """The server the claim assigned (the store weighed every worker's load), else the best by
        this worker's own load (engine/routing.py)."""
        load: dict[str, int] = {}
        for driver, _ in self._drivers.values():
            server = driver.record.backend.get("server")
            if isinstance(server, str):
                load[server] = load.get(server, 0) + 1
        return self.router.choose_server(record, load)

    def count_poll(self) -> None:
        self.stats["polls"] += 1

    def count_submit(self) -> None:
        self.stats["submits"] += 1

    def driver_context(self) -> DriverContext:
        """What each driver is given (context.py): never the engine itself."""
        return DriverContext(
            engine=self.settings.engine,
            pulsar=self.settings.pulsar,
            runtime_settings=self.settings.runtime,
            store=self.store,
            worker_id=self.worker_id,
            backend_for=self.backend_for,
            choose_server=self.choose_server,
            staging=lambda: self.staging,
            runtime=lambda: self.runtime,
            counters=StatsCounters(self.stats),
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        _ = self.backends  # fail at start, not at the first task
        await asyncio.to_thread(lambda: self.runtime)  # auto-detection runs `docker info` & co.
        log.info(
            "engine %s: runtime %s, Pulsar servers %s",
            self.worker_id,
            self.runtime.kind,
            ", ".join(self.backends),
        )
        self.router.start()  # the health probes
        await self._start_serving()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="engine-claim"),
            asyncio.create_task(self._renew_loop(), name="engine-renew"),
        ]

    async def _start_serving(self) -> None:
        """Backends that serve Pulsar (AMQP: the staging server, docs/amqp.md) start serving now, not at
        their first task: behind one staging URL a restarted replica must answer Pulsar's uploads for
        tasks another replica drives. A failure is logged; the backend retries at its first task."""
        for name, backend in self.backends.items():
            start_serving = getattr(backend, "start_serving", None)
            if start_serving is None:
                continue
            try:
                await start_serving()
            except (BackendError, BackendUnavailable) as exc:
                log.warning(
                    "Pulsar %s: could not start serving at engine start (retried at its first task): %s",
                    name,
                    exc,
                )

    async def stop(self) -> None:
        """Stop driving; give the leases back so another worker takes the tasks over at once.

        Only the leases of drivers that have ended: one still running after STOP_TIMEOUT (stuck in a
        call that ignores cancellation) keeps its lease, which then expires after
        ``engine.lease_seconds`` without renewal, so no other worker drives the task beside it."""
        for t in self._loops:
            t.cancel()
        drivers = list(self._drivers.items())
        for _, (_, task) in drivers:
            task.cancel()
        pending = [*self._loops, *(t for _, (_, t) in drivers)]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
            if still:
                log.warning(
                    "engine: %d task(s) did not stop within %.0fs: %s",
                    len(still),
                    STOP_TIMEOUT,
                    ", ".join(sorted(t.get_name() for t in still)),
                )
                for t in still:
                    log.debug("still running: %r", t.get_stack(limit=20))
        self._loops = []
        for task_id, (_, task) in drivers:
            if not task.done():
                with log_context.bound(task_id=task_id, worker_id=self.worker_id):
                    log.warning(
                        "task %s: its driver is still running; its lease is kept until it expires", task_id
                    )
                continue
            try:
                await self.store.release(self.worker_id, task_id)
            except Exception:
                with log_context.bound(task_id=task_id, worker_id=self.worker_id):
                    log.exception("could not release the lease of task %s", task_id)
        self._drivers.clear()
        if self._router is not None:
            await self._router.aclose()
        for backend in (self._backends or {}).values():
            await backend.aclose()
        if self._staging is not None:
            await self._staging.aclose()

    def notify_cancel(self, task_id: str) -> None:
        """The API cancelled a task (the store already says CANCELED): act on it now."""
        entry = self._drivers.get(task_id)
        if entry is not None:
            entry[0].wake.set()
        else:
            self._claim_wake.set()

    def notify_created(self, task_id: str) -> None:
        """A new task is in the store: claim now rather than at the next claim_interval tick."""
        self._claim_wake.set()

    @property
    def running(self) -> int:
        return len(self._drivers)

    # ---- loops ---------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        log_context.bind(worker_id=self.worker_id)  # this loop's own asyncio task: never leaks out
        interval = self.settings.engine.claim_interval
        lease = timedelta(seconds=self.settings.engine.lease_seconds)
        while True:
            try:
                if len(self._drivers) >= self.settings.engine.max_running_tasks:
                    await self._wait_claim(interval)
                    continue
                now = datetime.now(UTC)
                record = await self.store.claim(
                    self.worker_id, now, now + lease, policy=self.router.claim_policy()
                )
                if record is None:
                    await self._wait_claim(interval)
                    continue
                self.stats["claims"] += 1
                if not self._spawn(record):
                    # Our own task, claimed again because its lease expired (a stalled loop or
                    # store): the claim renewed the lease, and the driver that has it goes on.
                    with log_context.bound(task_id=record.id, worker_id=self.worker_id):
                        log.warning("engine: claimed task %s, which this worker drives already", record.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine: claim failed")
                await self._wait_claim(interval)

    async def _wait_claim(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._claim_wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._claim_wake.clear()

    def _spawn(self, record: TaskRecord) -> bool:
        """Start a driver for the task, unless one runs here already (at most one per task in a
        process): True when started."""
        entry = self._drivers.get(record.id)
        if entry is not None and not entry[1].done():
            return False
        driver = TaskDriver(self.driver_context(), record)
        task = asyncio.create_task(driver.run(), name=f"task-{record.id}")
        self._drivers[record.id] = (driver, task)

        def done(_: asyncio.Task[None], task_id: str = record.id) -> None:
            entry = self._drivers.get(task_id)
            if entry is not None and entry[1] is task:
                del self._drivers[task_id]
            self._claim_wake.set()

        task.add_done_callback(done)
        return True

    async def _renew_loop(self) -> None:
        log_context.bind(worker_id=self.worker_id)  # this loop's own asyncio task: never leaks out
        period = self.settings.engine.lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            ids = list(self._drivers)
            if not ids:
                continue
            try:
                until = datetime.now(UTC) + timedelta(seconds=self.settings.engine.lease_seconds)
                held = set(await self.store.renew(self.worker_id, ids, until))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine: lease renewal failed")
                continue
            for task_id in ids:
                if task_id not in held and task_id in self._drivers:
                    with log_context.bound(task_id=task_id, worker_id=self.worker_id):
                        log.warning(
                            "engine: lost the lease of task %s; another worker drives it now", task_id
                        )
                    self._drivers[task_id][1].cancel()

    def snapshot(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "running": self.running, **self.stats}
