"""Retention: finished tasks older than ``retention.finished_max_age`` are deleted.

Off by default (0 keeps everything). Every process that runs the engine runs this sweep, but a
named lease in the store (``take_lease("retention")``) lets one replica at a time do it: the holder
renews it at every sweep (and between batches), and another replica takes over once a holder has
been silent for longer than its lease. A sweep deletes in batches of ``retention.batch_size`` (one
store call, one transaction each) until nothing is left, so neither the store nor the event loop is
held for long. A task counts as ended when it reached its final state (the store records the
moment) *and* the engine has released it (``active`` false: its Pulsar job is cleaned); a task
with undelivered callbacks is kept until they are delivered or dropped. A deleted task is gone:
GET answers 404, lists skip it.

Scratch: the engine removes a task's local scratch (``engine.work_dir/<task id>``) and its Pulsar
job directory when it finishes the task; the sweep removes whatever is left of the scratch on this
host too (a crash between the end and the cleanup), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tesp_api import metrics
from tesp_api.config.settings import Settings
from tesp_api.store.port import StoreError, TaskStore
from tesp_api.tes.ids import is_safe_id

log = logging.getLogger(__name__)

LEASE_NAME = "retention"


def _remove_scratch(work_dir: Path, task_ids: list[str]) -> None:
    """``work_dir/<id>`` and re-run siblings ``<id>-r<n>`` of each task, if any are left."""
    for task_id in task_ids:
        if not is_safe_id(task_id):  # never build a path from an id this service did not issue
            continue
        for path in [work_dir / task_id, *work_dir.glob(f"{task_id}-r*")]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


class RetentionSweeper:
    """The periodic retention sweep of one process (see the module doc)."""

    def __init__(self, settings: Settings, store: TaskStore, *, worker_id: str | None = None) -> None:
        self.conf = settings.retention
        self.store = store
        self.work_dir = Path(settings.engine.work_dir)
        self.worker_id = worker_id or f"{socket.gethostname()}:{id(self):x}:retention"
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.conf.finished_max_age > 0

    @property
    def lease_seconds(self) -> float:
        """Longer than the interval, so a live holder keeps the lease from one sweep to the next."""
        return self.conf.interval + 60.0

    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._task = asyncio.create_task(self._loop(), name="retention-sweep")
        log.info(
            "retention: finished tasks are deleted %.0f s after their end (sweep every %.0f s)",
            self.conf.finished_max_age,
            self.conf.interval,
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except StoreError as exc:
                log.warning("retention: the store failed: %s", exc)
            except Exception:  # the loop must live on
                log.exception("retention: unexpected error")
            await asyncio.sleep(self.conf.interval)

    async def _hold_lease(self) -> bool:
        now = datetime.now(UTC)
        return await self.store.take_lease(
            LEASE_NAME, self.worker_id, now, now + timedelta(seconds=self.lease_seconds)
        )

    async def sweep_once(self, now: datetime | None = None) -> int:
        """One sweep, if this process holds the lease: how many tasks it deleted (also logged)."""
        if not self.enabled or not await self._hold_lease():
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.conf.finished_max_age)
        deleted = 0
        while True:
            ids = await self.store.delete_finished(cutoff, self.conf.batch_size)
            if ids:
                deleted += len(ids)
                metrics.TASKS_DELETED.inc(len(ids))
                await asyncio.to_thread(_remove_scratch, self.work_dir, ids)
            if len(ids) < self.conf.batch_size or not await self._hold_lease():
                break
        if deleted:
            log.info(
                "retention: deleted %d finished task(s) that ended before %s",
                deleted,
                cutoff.isoformat().replace("+00:00", "Z"),
            )
        return deleted
