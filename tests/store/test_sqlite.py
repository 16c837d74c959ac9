"""What the embedded SQLite store promises beyond the shared contract: one file shared safely by
several processes, and group commit that never lets one failing write undo the others."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tesp_api.store.port import DuplicateTask
from tesp_api.store.sqlite import SqliteTaskStore
from tests.store.test_contract import make_task

REPO = Path(__file__).resolve().parents[2]

_CLAIMER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from tesp_api.store.sqlite import SqliteTaskStore

    async def main(path: str, worker: str) -> None:
        store = SqliteTaskStore(path)
        await store.open()
        now = datetime.now(UTC)
        while (record := await store.claim(worker, now, now + timedelta(hours=1))) is not None:
            print(record.id, flush=True)
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def _create_tasks(path: str, n: int) -> set[str]:
    store = SqliteTaskStore(path)
    await store.open()
    try:
        return {(await store.create(make_task(), None)).id for _ in range(n)}
    finally:
        await store.close()


def test_several_processes_claiming_from_one_file_never_share_a_task(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    created = asyncio.run(_create_tasks(path, 60))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, path, f"w{i}"], stdout=subprocess.PIPE, text=True, cwd=str(REPO)
        )
        for i in range(3)
    ]
    outputs = [w.communicate(timeout=60)[0].split() for w in workers]
    assert all(w.returncode == 0 for w in workers)
    claimed = [task_id for out in outputs for task_id in out]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == created


async def test_tasks_written_by_one_process_are_read_by_another(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    writer, reader = SqliteTaskStore(path), SqliteTaskStore(path)
    await writer.open()
    await reader.open()
    try:
        record = await writer.create(make_task("shared"), None)
        got = await reader.get(record.id)
        assert got is not None and got.task.name == "shared"
    finally:
        await writer.close()
        await reader.close()


async def test_a_duplicate_in_a_group_commit_does_not_undo_the_other_creates(tmp_path: Path) -> None:
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    try:
        existing = make_task()
        await store.create(existing, None)
        others = [make_task() for _ in range(20)]
        results = await asyncio.gather(
            *(store.create(t, None) for t in others[:10]),
            store.create(existing, None),
            *(store.create(t, None) for t in others[10:]),
            return_exceptions=True,
        )
        assert sum(isinstance(r, DuplicateTask) for r in results) == 1
        assert await store.count() == 21
        for task in others:
            assert await store.get(task.id or "") is not None
    finally:
        await store.close()


async def test_using_a_closed_store_is_an_error_not_a_hang(tmp_path: Path) -> None:
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    await store.close()
    with pytest.raises(Exception, match="not open"):
        await store.count()


async def test_waiting_for_another_process_write_lock_blocks_neither_the_event_loop_nor_reads(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "tasks.sqlite3")
    store = SqliteTaskStore(path)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        existing = await store.create(make_task("before"), None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        pending = asyncio.ensure_future(store.create(make_task("waiting"), None))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5 and not pending.done()  # the loop ran on while the create waited
        got = await store.get(existing.id)  # and reads were answered
        assert got is not None and got.task.name == "before"
        other.execute("COMMIT")
        created = await pending
        assert await store.get(created.id) is not None
    finally:
        other.close()
        await store.close()
