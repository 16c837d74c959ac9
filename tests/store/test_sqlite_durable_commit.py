"""Durable commits with the fsync after the write lock (tesp_api/store/sqlite/syncer.py, issue 15):
with ``synchronous=FULL`` the writer commits at SQLite's NORMAL and a syncer thread fdatasyncs the
WAL before the batch's callers are answered. Real files and real processes; the fsync itself is
the store's ``wal_sync`` (tests substitute one that blocks on cue or fails with EIO: a disk that
fails on cue is not available here)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import pytest

from tesp_api.store.port import StoreError, StoreUnavailable
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.store.sqlite.writer_queue import LOCK_SUFFIX
from tests.store.test_contract import make_task
from tests.store.test_sqlite_writer_queue import _CREATOR, _killed_at_exit, _lock_is_free, _python

HANG_GUARD = 60.0  # only a hang (the bug) ever reaches this


class GatedSync:
    """A real fdatasync that first waits until the test opens the gate; counts its calls."""

    gate: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()
    calls: ClassVar[list[int]] = []

    @staticmethod
    def sync(fd: int) -> None:
        GatedSync.calls.append(fd)
        GatedSync.entered.set()
        GatedSync.gate.wait(HANG_GUARD)
        os.fdatasync(fd)


class GatedStore(SqliteTaskStore):
    wal_sync = staticmethod(GatedSync.sync)


class ArmedEio:
    """fdatasync that fails with EIO once armed (and for good, as a failing disk would)."""

    armed: ClassVar[bool] = False

    @staticmethod
    def sync(fd: int) -> None:
        if ArmedEio.armed:
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)


class FailingSyncStore(SqliteTaskStore):
    wal_sync = staticmethod(ArmedEio.sync)


def _rows(path: Path) -> set[str]:
    """The task ids in the file, as another connection (another process would) sees them."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[GatedStore]:
    GatedSync.gate.set()  # open() writes the schema: let it through
    GatedSync.calls = []
    store = GatedStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    GatedSync.gate.clear()
    GatedSync.entered.clear()
    GatedSync.calls = []
    yield store
    GatedSync.gate.set()
    await store.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_committed_write_is_answered_only_after_the_wal_fsync_returns(
    gated: GatedStore, tmp_path: Path
) -> None:
    pending = asyncio.ensure_future(gated.create(make_task("durable"), None))
    assert await asyncio.to_thread(GatedSync.entered.wait, HANG_GUARD)  # the syncer is in the fsync
    assert len(_rows(tmp_path / "tasks.sqlite3")) == 1  # committed (visible), not yet durable
    await asyncio.sleep(0.05)
    assert not pending.done()
    GatedSync.gate.set()
    created = await asyncio.wait_for(pending, HANG_GUARD)
    assert created.task.name == "durable"


async def test_the_write_lock_and_the_queue_are_free_while_the_fsync_runs(
    gated: GatedStore, tmp_path: Path
) -> None:
    pending = asyncio.ensure_future(gated.create(make_task(), None))
    assert await asyncio.to_thread(GatedSync.entered.wait, HANG_GUARD)
    path = tmp_path / "tasks.sqlite3"
    assert _lock_is_free(str(path) + LOCK_SUFFIX)  # another process's writer would get its turn
    other = sqlite3.connect(path, timeout=0, isolation_level=None)  # as another process: no waiting
    try:
        other.execute("BEGIN IMMEDIATE")  # SQLite's write lock is free too
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert not pending.done()
    GatedSync.gate.set()
    await asyncio.wait_for(pending, HANG_GUARD)


async def test_the_writer_commits_the_next_batch_while_an_fsync_runs(
    gated: GatedStore, tmp_path: Path
) -> None:
    first = asyncio.ensure_future(gated.create(make_task("first"), None))
    assert await asyncio.to_thread(GatedSync.entered.wait, HANG_GUARD)
    second = asyncio.ensure_future(gated.create(make_task("second"), None))
    await _until(lambda: len(_rows(tmp_path / "tasks.sqlite3")) == 2)  # committed during the fsync
    assert not first.done() and not second.done()
    GatedSync.gate.set()
    done = await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD)
    assert [r.task.name for r in done] == ["first", "second"]
    assert len(GatedSync.calls) <= 2 * 2  # one fsync (and its directory's) covered the second batch


async def test_a_failed_wal_fsync_fails_its_callers_and_every_later_write(tmp_path: Path) -> None:
    ArmedEio.armed = False
    store = FailingSyncStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    try:
        ArmedEio.armed = True
        with pytest.raises(StoreUnavailable, match=r"fsync .* failed"):
            await store.create(make_task(), None)
        ArmedEio.armed = False  # fsyncgate: a failed fsync is not retried, the store stays failed
        with pytest.raises(StoreUnavailable):
            await store.create(make_task(), None)
    finally:
        ArmedEio.armed = False
        await store.close()


async def test_a_store_whose_first_commit_cannot_be_made_durable_does_not_open(tmp_path: Path) -> None:
    ArmedEio.armed = True
    try:
        with pytest.raises(StoreError, match="cannot make writes durable"):
            await FailingSyncStore(str(tmp_path / "tasks.sqlite3")).open()  # the schema's commit
    finally:
        ArmedEio.armed = False


async def test_the_writer_connection_commits_at_normal_and_fsyncs_after(gated: GatedStore) -> None:
    GatedSync.gate.set()
    level = await gated._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0], write=True)
    assert level == 1  # NORMAL: COMMIT writes the WAL, no fsync under the lock
    await gated.create(make_task(), None)
    assert GatedSync.calls  # the syncer's fsync made it durable


async def test_synchronous_normal_never_fsyncs(tmp_path: Path) -> None:
    ArmedEio.armed = True
    store = FailingSyncStore(str(tmp_path / "tasks.sqlite3"), synchronous="NORMAL")
    await store.open()  # an fsync would fail it
    try:
        created = await store.create(make_task(), None)
        assert (await store.get(created.id)) is not None
    finally:
        ArmedEio.armed = False
        await store.close()


async def test_every_answered_create_is_in_the_file_after_a_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    with _killed_at_exit(_python(_CREATOR, str(path), "100000")) as creator:
        assert creator.stdout is not None
        answered = [await asyncio.to_thread(creator.stdout.readline) for _ in range(200)]
        os.kill(creator.pid, signal.SIGKILL)  # in the middle of its writes and fsyncs
    assert {line.strip() for line in answered} <= _rows(path)
