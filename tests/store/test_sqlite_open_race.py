"""A store opening a file whose write lock another connection holds waits for it, not fails.

The API processes of api.workers start together on a file nobody has opened yet, and each
switches it to WAL. While one holds the file's write lock in the rollback journal, SQLite answers
the other's ``PRAGMA journal_mode = WAL`` "database is locked" AT ONCE, without waiting in the busy
handler: one start in ten failed so (bench_api.py's 2-process section, exit 2). Here the other
process is a real connection holding that lock (``BEGIN IMMEDIATE`` on a rollback-journal file)
for 0.3 s: exactly the state the losing process met."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from tesp_api.store.sqlite import SqliteTaskStore

HOLD_SECONDS = 0.3


def test_a_store_opening_a_new_file_waits_for_its_write_lock_instead_of_failing(tmp_path: Path) -> None:
    path = str(tmp_path / "tasks.sqlite3")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE placeholder (x)")  # a file in the rollback journal
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(HOLD_SECONDS, holder.execute, args=("COMMIT",))
    release.start()

    async def open_and_read() -> int:
        store = SqliteTaskStore(path)
        await store.open()
        try:
            return await store.count()
        finally:
            await store.close()

    try:
        assert asyncio.run(open_and_read()) == 0
    finally:
        release.join()
        holder.close()
