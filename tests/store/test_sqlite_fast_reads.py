"""The SQLite store's fast read paths (issue 15, docs/store.md "Fast reads").

* ``list_summaries_json``: the MINIMAL ListTasks answer built by SQLite's JSON functions; it must
  say exactly what ``list_summaries`` says (tasks, order, filters, owner scope, page tokens).
* point reads (``get``, ``get_summary``) on the event loop's own read-only connection: they never
  wait for a writer, and any SQLite error there sends the read to the reader thread instead.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from tesp_api.store.port import CorruptRecord, ListQuery, TaskStore
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.store.test_contract import ALICE, BOB, create


def _as_answer(page_tasks: list[tuple[str, str]], token: str | None) -> dict[str, object]:
    body: dict[str, object] = {"tasks": [{"id": i, "state": s} for i, s in page_tasks]}
    if token:
        body["next_page_token"] = token
    return body


async def test_the_json_page_says_what_list_summaries_says_page_by_page(
    sqlite_store: SqliteTaskStore,
) -> None:
    store: TaskStore = sqlite_store
    for i in range(7):
        await create(store, f"job-{i}", owner=ALICE if i % 2 else BOB, tags={"k": "v"} if i % 3 else None)
    queries = [
        ListQuery(page_size=2),
        ListQuery(page_size=3, owner=ALICE),
        ListQuery(page_size=2, name_prefix="job-"),
        ListQuery(page_size=1, tags=[("k", "v")]),
        ListQuery(page_size=2, state=TesState.QUEUED),
        ListQuery(page_size=7),
        ListQuery(page_size=2, state=TesState.RUNNING),  # no task: an empty page
    ]
    for query in queries:
        token: str | None = None
        while True:
            lean = await sqlite_store.list_summaries(dataclasses.replace(query, page_token=token))
            raw = await sqlite_store.list_summaries_json(dataclasses.replace(query, page_token=token))
            expected = _as_answer([(s.id, s.state.value) for s in lean.summaries], lean.next_page_token)
            assert json.loads(raw) == expected, query
            if lean.next_page_token is None:
                break
            token = lean.next_page_token


async def test_the_json_page_escapes_ids_as_json(sqlite_store: SqliteTaskStore, tmp_path: Path) -> None:
    record = await create(sqlite_store, "odd")
    odd_id = 'a"b\\c\u00e9\n'
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:  # no API accepts such an id; a hand edit could
        conn.execute("UPDATE tasks SET id = ? WHERE id = ?", (odd_id, record.id))
    page = json.loads(await sqlite_store.list_summaries_json(ListQuery()))
    assert page == {"tasks": [{"id": odd_id, "state": "QUEUED"}]}


async def test_a_row_with_an_unknown_state_fails_the_json_page_as_corrupt(
    sqlite_store: SqliteTaskStore, tmp_path: Path
) -> None:
    record = await create(sqlite_store, "bad")
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
        conn.execute("UPDATE tasks SET state = 'NOT_A_STATE' WHERE id = ?", (record.id,))
    with pytest.raises(CorruptRecord):
        await sqlite_store.list_summaries_json(ListQuery())


async def test_a_point_read_does_not_wait_for_another_writers_transaction(
    sqlite_store: SqliteTaskStore, tmp_path: Path
) -> None:
    record = await create(sqlite_store, "held")
    other = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock, uncommitted change
        other.execute("UPDATE tasks SET state = 'RUNNING' WHERE id = ?", (record.id,))
        summary = await sqlite_store.get_summary(record.id)
        full = await sqlite_store.get(record.id)
        assert summary is not None and summary.state == TesState.QUEUED  # the committed state
        assert full is not None and full.state == TesState.QUEUED
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_point_read_interrupted_on_the_event_loop_is_answered_by_the_reader_thread(
    sqlite_store: SqliteTaskStore,
) -> None:
    record = await create(sqlite_store, "interrupted")
    direct = sqlite_store._direct
    assert direct is not None
    direct[1].set_progress_handler(lambda: 1, 1)  # every statement on the loop's connection is interrupted
    sqlite_store._direct_until = float("inf")  # and it is in use (not the once-a-second thread read)
    summary = await sqlite_store.get_summary(record.id)
    full = await sqlite_store.get(record.id)
    assert summary is not None and summary.id == record.id
    assert full is not None and full.id == record.id
    assert await sqlite_store.get_summary("no-such-task") is None
