"""The BASIC view's lean reads (BasicReads: get_basic_json, list_basic_json; issue 15).

BASIC is FULL minus inputs' content, executor stdout/stderr and system_logs, and those heavy parts
are stored apart (tesp_api/store/lean.py). These tests hold the lean answers equal to
``render_task(record, BASIC)`` of the whole record, show that they never read the heavy parts, and
that every other read joins them back. Every test runs on each adapter (conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tesp_api.store.port import BasicReads, CorruptRecord, ListQuery, LogPatch, Owner, TaskRecord, TaskStore
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import (
    TesExecutor,
    TesExecutorLog,
    TesInput,
    TesOutput,
    TesOutputFileLog,
    TesState,
    TesTask,
    TesView,
)
from tesp_api.tes.views import render_task
from tests.store.test_contract import ALICE, BOB, create


def rich_task(name: str = "rich") -> TesTask:
    """Every part BASIC shows, hides or masks: contents, URLs with credentials, a callback URL."""
    return TesTask(
        id=new_task_id(),
        name=name,
        tags={"project": "p"},
        inputs=[
            TesInput(path="/in/a.txt", content="A" * 5000),
            TesInput(url="https://user:pw@example.org/data?X-Amz-Signature=abc&x=1", path="/in/b"),
            TesInput(path="/in/c.txt", content=""),
        ],
        outputs=[TesOutput(url="s3://bucket/out?token=t0p", path="/out/x")],
        executors=[TesExecutor(image="alpine", command=["cat", "/in/a.txt"], env={"K": "v"})],
        callback_url="https://cb.example/hook?sig=s3cret",
    )


RICH_LOG = LogPatch(
    start_time="2030-01-01T00:00:00Z",
    system_logs=["pulled https://u:p@registry.example/img", "started"],
    metadata={"host": "n1"},
    outputs=[TesOutputFileLog(url="s3://bucket/out?token=t0p", path="/out/x", size_bytes="3")],
    executor_logs={0: TesExecutorLog(stdout="o" * 3000, stderr="e" * 100, exit_code=0, start_time="t")},
)


async def rich_record(store: TaskStore, owner: Owner | None = None, name: str = "rich") -> TaskRecord:
    record = await store.create(rich_task(name), owner)
    updated = await store.update(record.id, state=TesState.RUNNING, log=RICH_LOG)
    assert updated is not None
    return updated


def basic(record: TaskRecord) -> dict[str, Any]:
    return render_task(record, TesView.BASIC)


async def test_every_adapter_has_the_basic_reads(store: TaskStore) -> None:
    assert isinstance(store, BasicReads)


async def test_get_basic_json_is_the_basic_view_of_the_whole_record(store: TaskStore) -> None:
    queued = await store.create(rich_task("queued"), None)
    started = await rich_record(store)
    only_system = await store.create(rich_task("warned"), None)
    await store.update(only_system.id, log=LogPatch(system_logs=["a warning at creation"]))
    for record_id in (queued.id, started.id, only_system.id):
        record = await store.get(record_id)
        assert record is not None
        lean = await store.get_basic_json(record_id)  # type: ignore[attr-defined]
        assert json.loads(lean) == basic(record)
    body = json.loads(await store.get_basic_json(started.id))  # type: ignore[attr-defined]
    assert "content" not in json.dumps(body["inputs"]) and "system_logs" not in body["logs"][0]
    assert "pw@" not in json.dumps(body) and "s3cret" not in json.dumps(body)  # masked as in FULL


async def test_get_basic_json_is_scoped_to_the_owner_like_get(store: TaskStore) -> None:
    record = await rich_record(store, ALICE)
    assert await store.get_basic_json(record.id, BOB) is None  # type: ignore[attr-defined]
    assert await store.get_basic_json(record.id, ALICE) is not None  # type: ignore[attr-defined]
    assert await store.get_basic_json("no-such-task") is None  # type: ignore[attr-defined]


async def test_list_basic_json_pages_like_list_with_interchangeable_tokens(store: TaskStore) -> None:
    for i in range(7):
        owner = ALICE if i % 2 else BOB
        if i % 3:
            await rich_record(store, owner, name=f"job-{i}")
        else:
            await create(store, f"job-{i}", owner=owner, tags={"k": "v"})
    queries = [
        ListQuery(page_size=2),
        ListQuery(page_size=3, owner=ALICE),
        ListQuery(page_size=2, name_prefix="job-"),
        ListQuery(page_size=1, tags=[("k", "v")]),
        ListQuery(page_size=2, state=TesState.RUNNING),
        ListQuery(page_size=100),
    ]
    for query in queries:
        full_token: str | None = None
        lean_token: str | None = None
        while True:
            full = await store.list(dataclasses.replace(query, page_token=full_token))
            lean = json.loads(await store.list_basic_json(dataclasses.replace(query, page_token=lean_token)))  # type: ignore[attr-defined]
            assert lean["tasks"] == [basic(r) for r in full.records], query
            assert ("next_page_token" in lean) == (full.next_page_token is not None)
            if full.next_page_token is None:
                break
            full_token, lean_token = lean["next_page_token"], full.next_page_token


async def test_a_basic_page_counts_only_the_light_texts_against_the_byte_budget(store: TaskStore) -> None:
    for _ in range(3):
        await store.create(rich_task(), None)  # 5,000 bytes of content each
    query = ListQuery(page_size=10, max_bytes=4000)
    assert len((await store.list(query)).records) == 1  # FULL reads the contents: cut after one
    lean = json.loads(await store.list_basic_json(query))  # type: ignore[attr-defined]
    assert len(lean["tasks"]) == 3 and "next_page_token" not in lean


async def _break_heavy_parts(store: TaskStore, task_id: str, tmp_path: Path) -> None:
    """Make the stored heavy parts undecodable: a read that touches them fails."""
    if isinstance(store, SqliteTaskStore):
        with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
            conn.execute(
                "UPDATE tasks SET content_json = 'not json', log_text_json = 'not json' WHERE id = ?",
                (task_id,),
            )
        conn.close()
    else:
        await store._tasks.update_one(  # type: ignore[attr-defined]
            {"_id": task_id}, {"$set": {"content_json": "not json", "log_text_json": "not json"}}
        )


async def test_basic_reads_never_read_the_heavy_parts(store: TaskStore, tmp_path: Path) -> None:
    record = await rich_record(store)
    expected = basic(record)
    await _break_heavy_parts(store, record.id, tmp_path)
    assert json.loads(await store.get_basic_json(record.id)) == expected  # type: ignore[attr-defined]
    page = json.loads(await store.list_basic_json(ListQuery()))  # type: ignore[attr-defined]
    assert page["tasks"] == [expected]
    with pytest.raises(CorruptRecord):  # FULL needs them, and says so
        await store.get(record.id)


async def test_every_full_read_joins_the_heavy_parts_back(store: TaskStore) -> None:
    task = rich_task()
    record = await store.create(task, ALICE)
    await store.update(record.id, log=RICH_LOG)
    await store.update(record.id, log=LogPatch(system_logs=["third"]))
    got = await store.get(record.id)
    assert got is not None
    assert got.task == task
    assert got.log.system_logs == [*(RICH_LOG.system_logs or []), "third"]
    assert got.log.logs == [RICH_LOG.executor_logs[0]]
    listed = (await store.list(ListQuery())).records
    assert [r.task for r in listed] == [task] and listed[0].log == got.log


async def test_an_undecodable_basic_row_is_a_corrupt_record(store: TaskStore, tmp_path: Path) -> None:
    record = await rich_record(store)
    if isinstance(store, SqliteTaskStore):
        with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
            conn.execute("UPDATE tasks SET task_json = 'not json' WHERE id = ?", (record.id,))
        conn.close()
    else:
        await store._tasks.update_one({"_id": record.id}, {"$set": {"task_json": "not json"}})  # type: ignore[attr-defined]
    with pytest.raises(CorruptRecord):
        await store.get_basic_json(record.id)  # type: ignore[attr-defined]
    with pytest.raises(CorruptRecord):
        await store.list_basic_json(ListQuery())  # type: ignore[attr-defined]


def whole_texts(record: TaskRecord) -> tuple[str, str]:
    """The task and log as stored before the split: one text each, heavy parts inside."""
    executors = {"0": RICH_LOG.executor_logs[0].model_dump(mode="json", exclude_none=True)}
    log = record.log.model_dump(mode="json", exclude_none=True, exclude={"logs"})
    return record.task.model_dump_json(exclude_none=True), json.dumps({"log": log, "executors": executors})


async def test_a_task_stored_whole_before_the_split_reads_right_in_every_view(
    store: TaskStore, tmp_path: Path
) -> None:
    record = await rich_record(store)
    task_json, log_json = whole_texts(record)
    if isinstance(store, SqliteTaskStore):
        with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
            conn.execute(
                "UPDATE tasks SET task_json = ?, log_json = ?, content_json = NULL, log_text_json = NULL"
                " WHERE id = ?",
                (task_json, log_json, record.id),
            )
        conn.close()
    else:
        await store._tasks.update_one(  # type: ignore[attr-defined]
            {"_id": record.id},
            {
                "$set": {"task_json": task_json, "log_json": log_json},
                "$unset": {"content_json": "", "log_text_json": ""},
            },
        )
    got = await store.get(record.id)
    assert got is not None and (got.task, got.log) == (record.task, record.log)
    assert json.loads(await store.get_basic_json(record.id)) == basic(record)  # type: ignore[attr-defined]
    page = json.loads(await store.list_basic_json(ListQuery()))  # type: ignore[attr-defined]
    assert page["tasks"] == [basic(record)]
