"""The writer queue of the SQLite store (tesp_api/store/sqlite/writer_queue.py): the processes that
write one file take turns through a ``flock`` on ``<file>-writer.lock``, woken by the kernel when
the holder commits, instead of sleeping in SQLite's busy handler (issue 15, api.workers). These
tests attack it with real processes: concurrent writers lose nothing, and a writer killed while it
holds the queue (in the middle of a write transaction) blocks nobody."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tesp_api.store.port import DuplicateTask
from tesp_api.store.sqlite import SqliteTaskStore, writer_queue
from tesp_api.store.sqlite.writer_queue import LOCK_SUFFIX
from tests.store.test_contract import make_task

REPO = Path(__file__).resolve().parents[2]

# Creates N tasks in groups of 25 at once (so they group-commit), printing each id it was answered.
_CREATOR = textwrap.dedent(
    """
    import asyncio, sys
    from tesp_api.store.sqlite import SqliteTaskStore
    from tests.store.test_contract import make_task

    async def main(path: str, n: int) -> None:
        store = SqliteTaskStore(path)
        await store.open()
        for start in range(0, n, 25):
            for record in await asyncio.gather(*(store.create(make_task(), None) for _ in range(25))):
                print(record.id, flush=True)
        await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)

# Takes the queue the way the store does (a write operation of its writer thread), writes a row
# inside the transaction, says so and never commits: it is killed there.
_HOLDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from tesp_api.store.sqlite import SqliteTaskStore

    def hold(conn):
        conn.execute("INSERT INTO store_meta(key, value) VALUES ('held', 'never committed')")
        print("holding", flush=True)
        time.sleep(3600)

    async def main(path: str) -> None:
        store = SqliteTaskStore(path)
        await store.open()
        await store._call(hold, write=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=str(REPO)
    )


@contextlib.contextmanager
def _killed_at_exit(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def _lock_is_free(lock_path: str) -> bool:
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it if taken
    return True


def _flock_waiters(lock_path: str, pid: int) -> int:
    """How many flock requests of ``pid`` on the lock file wait in the kernel (/proc/locks shows a
    blocked request as ``-> FLOCK ...`` under the lock that blocks it)."""
    inode = os.stat(lock_path).st_ino
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # 1: -> FLOCK ADVISORY WRITE <pid> <major:minor:inode> 0 EOF
        if len(fields) > 6 and fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid):
            waiting += fields[6].rsplit(":", 1)[-1] == str(inode)
    return waiting


class CommitCounting(sqlite3.Connection):
    commits: ClassVar[int] = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql == "COMMIT":
            CommitCounting.commits += 1
        return super().execute(sql, *args)


class CommitCountingStore(SqliteTaskStore):
    connection_class = CommitCounting


def test_two_processes_creating_at_once_lose_no_task(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    creators = [_python(_CREATOR, path, "400") for _ in range(2)]
    outputs = []
    for creator in creators:
        with _killed_at_exit(creator):
            outputs.append(creator.communicate(timeout=240)[0].split())
            assert creator.returncode == 0
    answered = [task_id for out in outputs for task_id in out]
    assert len(answered) == len(set(answered)) == 800

    async def stored() -> set[str]:
        store = SqliteTaskStore(path)
        await store.open()
        try:
            return {task_id for task_id in answered if await store.get(task_id) is not None}
        finally:
            await store.close()

    assert asyncio.run(stored()) == set(answered)


async def test_a_writer_killed_holding_the_queue_blocks_no_other_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    store = SqliteTaskStore(path)
    await store.open()
    try:
        with _killed_at_exit(_python(_HOLDER, path)) as holder:
            assert holder.stdout is not None
            assert await asyncio.to_thread(holder.stdout.readline) == "holding\n"
            lock_path = path + LOCK_SUFFIX
            assert not _lock_is_free(lock_path)
            pending = asyncio.ensure_future(store.create(make_task("after the kill"), None))
            while _flock_waiters(lock_path, os.getpid()) == 0:  # our writer queues in the kernel
                await asyncio.sleep(0.01)
            assert not pending.done()
            os.kill(holder.pid, signal.SIGKILL)  # in the middle of its write transaction
            created = await asyncio.wait_for(pending, 120)  # the kernel let our writer go
        got = await store.get(created.id)
        assert got is not None and got.task.name == "after the kill"
        held = await store._call(
            lambda conn: conn.execute("SELECT count(*) FROM store_meta WHERE key = 'held'").fetchone(),
            write=False,
        )
        assert held == (0,)  # the killed writer's transaction was rolled back
    finally:
        await store.close()


async def test_the_queue_is_free_after_a_commit_and_after_a_failed_write(
    sqlite_store: SqliteTaskStore, tmp_path: Path
) -> None:
    store = sqlite_store
    lock_path = str(tmp_path / "tasks.sqlite3") + LOCK_SUFFIX
    task = make_task()
    await store.create(task, None)
    assert _lock_is_free(lock_path)
    with pytest.raises(DuplicateTask):
        await store.create(task, None)
    assert _lock_is_free(lock_path)


async def test_the_lock_file_is_open_to_the_server_user_only(
    sqlite_store: SqliteTaskStore, tmp_path: Path
) -> None:
    lock_path = str(tmp_path / "tasks.sqlite3") + LOCK_SUFFIX
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600


async def test_a_lock_file_that_cannot_be_opened_leaves_the_store_writing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "tasks.sqlite3")
    os.mkdir(path + LOCK_SUFFIX)  # a directory cannot be opened for writing
    store = SqliteTaskStore(path)
    await store.open()
    try:
        record = await store.create(make_task("without the queue"), None)
        assert await store.get(record.id) is not None
    finally:
        await store.close()
    assert "writer lock" in caplog.text


async def test_writes_queued_while_waiting_for_the_turn_join_the_same_commit(tmp_path: Path) -> None:
    path = str(tmp_path / "tasks.sqlite3")
    store = CommitCountingStore(path)
    await store.open()
    other = os.open(path + LOCK_SUFFIX, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's turn
        first = asyncio.ensure_future(store.create(make_task("first"), None))
        while _flock_waiters(path + LOCK_SUFFIX, os.getpid()) == 0:  # its batch waits for the turn
            await asyncio.sleep(0.01)
        later = [asyncio.ensure_future(store.create(make_task(), None)) for _ in range(4)]
        assert store._writer is not None
        while store._writer.queue.qsize() == 0:  # queued behind the waiting batch
            await asyncio.sleep(0.01)
        commits = CommitCounting.commits
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.wait_for(asyncio.gather(first, *later), 60)
        assert CommitCounting.commits - commits == 1
        assert await store.count() == 5
    finally:
        os.close(other)
        await store.close()


async def test_a_file_system_refusing_flock_leaves_the_store_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available (injected)")

    monkeypatch.setattr(writer_queue.fcntl, "flock", refuse)  # as some network file systems answer
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    try:
        first = await store.create(make_task(), None)
        second = await store.create(make_task(), None)
        assert await store.get(first.id) is not None and await store.get(second.id) is not None
    finally:
        await store.close()
    assert caplog.text.count("writer lock") == 1  # said once, then written without it
