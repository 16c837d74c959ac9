"""A SQLite file written before the heavy parts were kept apart (issue 15, store/lean.py): opening
it adds the columns and splits every row, keeping every task and log exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tesp_api.store.port import CorruptRecord
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.store.test_lean_basic import basic, rich_record, whole_texts


def _downgrade(path: Path, wholes: dict[str, tuple[str, str]]) -> None:
    """The file as the version before the split wrote it: whole texts, no heavy columns."""
    with sqlite3.connect(path) as conn:
        for task_id, (task_json, log_json) in wholes.items():
            conn.execute(
                "UPDATE tasks SET task_json = ?, log_json = ? WHERE id = ?", (task_json, log_json, task_id)
            )
        conn.execute("ALTER TABLE tasks DROP COLUMN content_json")
        conn.execute("ALTER TABLE tasks DROP COLUMN log_text_json")
    conn.close()


async def test_opening_an_old_file_splits_every_row_and_keeps_every_task_and_log(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    store = SqliteTaskStore(str(path))
    await store.open()
    records = [await rich_record(store, name=f"r{i}") for i in range(3)]
    plain = await store.create(records[0].task.model_copy(update={"id": "plain-task", "inputs": None}), None)
    await store.close()
    _downgrade(path, {r.id: whole_texts(r) for r in records})
    with sqlite3.connect(path) as conn:  # a row that does not decode is kept as it is
        conn.execute("UPDATE tasks SET log_json = 'not json' WHERE id = ?", (plain.id,))
    conn.close()

    store = SqliteTaskStore(str(path))
    await store.open()
    try:
        for record in records:
            got = await store.get(record.id)
            assert got is not None and (got.task, got.log, got.state) == (
                record.task,
                record.log,
                TesState.RUNNING,
            )
            assert json.loads(await store.get_basic_json(record.id)) == basic(record)
        with pytest.raises(CorruptRecord):  # the broken row is reported as before, not lost
            await store.get(plain.id)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        rows = dict(
            conn.execute("SELECT id, content_json IS NOT NULL AND log_text_json IS NOT NULL FROM tasks")
        )
        kept = conn.execute("SELECT log_json FROM tasks WHERE id = ?", (plain.id,)).fetchone()[0]
    conn.close()
    assert all(rows[r.id] for r in records) and kept == "not json"
