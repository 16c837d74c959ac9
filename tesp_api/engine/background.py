"""The loops that run beside the engine in every process that runs it (``tesp-api serve`` with the
engine on, ``tesp-api worker``): callback delivery (engine/callbacks.py) and the retention sweep
(engine/retention.py). Both are safe with any number of such processes on one store: outbox events
and the sweep are taken under leases in the store. API-only replicas (``engine.enabled = false``)
run neither, as they run no background work at all."""

from __future__ import annotations

from tesp_api.config.settings import Settings
from tesp_api.engine.callbacks import CallbackDelivery
from tesp_api.engine.retention import RetentionSweeper
from tesp_api.store.port import TaskStore


class BackgroundLoops:
    """Callback delivery and the retention sweep, started and stopped together."""

    def __init__(self, settings: Settings, store: TaskStore, *, worker_id: str | None = None) -> None:
        self.callbacks = CallbackDelivery(
            settings, store, worker_id=f"{worker_id}:callbacks" if worker_id else None
        )
        self.retention = RetentionSweeper(
            settings, store, worker_id=f"{worker_id}:retention" if worker_id else None
        )

    async def start(self) -> None:
        await self.callbacks.start()
        await self.retention.start()

    async def stop(self) -> None:
        await self.retention.stop()
        await self.callbacks.stop()
