"""The SQLite store under faults (issue 12): a row that does not decode, a failed ROLLBACK, a writer
that cannot go on, a database file deleted or replaced under the running server. Failures are
injected through the store's ``connection_class`` (a real sqlite3 connection that raises on the
statements a test arms): a real disk that fails on cue is not available here."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.port import CorruptRecord, StoreError, StoreUnavailable
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.store.test_contract import make_task

HANG_GUARD = 60.0  # only a hang (the bug) ever reaches this


class FlakyConnection(sqlite3.Connection):
    """Raises sqlite3.OperationalError for the armed statements, once per arming."""

    armed: ClassVar[dict[str, int]] = {}
    refuse_connect: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if FlakyConnection.refuse_connect:
            raise sqlite3.OperationalError("unable to open database file (injected)")
        super().__init__(*args, **kwargs)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if FlakyConnection.armed.get(sql, 0) > 0:
            FlakyConnection.armed[sql] -= 1
            raise sqlite3.OperationalError(f"disk I/O error (injected on {sql})")
        return super().execute(sql, *args)


class FlakyStore(SqliteTaskStore):
    connection_class = FlakyConnection


@pytest.fixture
async def flaky(tmp_path: Path) -> Any:
    FlakyConnection.armed = {}
    FlakyConnection.refuse_connect = False
    store = FlakyStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    yield store
    FlakyConnection.armed = {}
    FlakyConnection.refuse_connect = False
    await store.close()


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await s.open()
    yield s
    await s.close()


def _hours() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now, now + timedelta(hours=1)


def _corrupt(path: Path, task_id: str, task_json: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tasks SET task_json = ? WHERE id = ?", (task_json, task_id))


async def test_a_row_that_does_not_decode_does_not_block_the_task_behind_it(
    store: SqliteTaskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await store.create(make_task(), None)
    good = await store.create(make_task(), None)
    # An old row a stricter model refuses (extra="forbid"), the case the issue names.
    _corrupt(
        tmp_path / "tasks.sqlite3", bad.id, '{"executors": [{"image": "a", "command": ["x"]}], "old": 1}'
    )
    with caplog.at_level(logging.ERROR, logger="tesp_api.store.sqlite"):
        claimed = await store.claim("w1", *_hours())
    assert claimed is not None and claimed.id == good.id
    assert bad.id in caplog.text and "taken out of the queue" in caplog.text
    assert await store.claim("w1", *_hours()) is None  # the bad row is no longer claimable


async def test_a_row_that_does_not_decode_ends_system_error_with_a_system_log_line(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    bad = await store.create(make_task(), None)
    _corrupt(tmp_path / "tasks.sqlite3", bad.id, "{not json")
    assert await store.claim("w1", *_hours()) is None
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
        state, active, log_json = conn.execute(  # the system log lines are kept apart (store/lean.py)
            "SELECT state, active, log_text_json FROM tasks WHERE id = ?", (bad.id,)
        ).fetchone()
    assert (state, active) == (TesState.SYSTEM_ERROR.value, 0)
    assert "cannot read this stored task" in log_json and "invalid json" in log_json.lower()


async def test_a_row_in_a_final_state_that_does_not_decode_keeps_its_state(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    bad = await store.create(make_task(), None)
    await store.update(bad.id, state=TesState.CANCELED)  # canceled, still active until cleaned up
    _corrupt(tmp_path / "tasks.sqlite3", bad.id, "[]")
    assert await store.claim("w1", *_hours()) is None
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
        (state,) = conn.execute("SELECT state FROM tasks WHERE id = ?", (bad.id,)).fetchone()
    assert state == TesState.CANCELED.value


async def test_reading_a_row_that_does_not_decode_is_a_store_error_naming_no_value(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    bad = await store.create(make_task(), None)
    secret = "hunter2-secret-value"
    _corrupt(
        tmp_path / "tasks.sqlite3",
        bad.id,
        f'{{"executors": [{{"image": "a", "command": ["x"]}}], "x": "{secret}"}}',
    )
    with pytest.raises(CorruptRecord) as raised:
        await store.get(bad.id)
    assert isinstance(raised.value, StoreError)
    assert secret not in str(raised.value)


async def test_a_failed_rollback_does_not_kill_the_writer(flaky: FlakyStore) -> None:
    FlakyConnection.armed = {"COMMIT": 1, "ROLLBACK": 1}
    with pytest.raises(StoreError):
        await asyncio.wait_for(flaky.create(make_task(), None), HANG_GUARD)
    record = await asyncio.wait_for(flaky.create(make_task(), None), HANG_GUARD)  # was: waits for ever
    assert (await flaky.get(record.id)) is not None
    assert await flaky.count() == 1  # the failed batch wrote nothing


async def test_a_writer_that_cannot_go_on_fails_every_write_at_once_with_a_clear_error(
    flaky: FlakyStore,
) -> None:
    FlakyConnection.armed = {"COMMIT": 1, "ROLLBACK": 1}
    FlakyConnection.refuse_connect = True  # the fresh connection after the failed ROLLBACK cannot open
    with pytest.raises(StoreError):
        await asyncio.wait_for(flaky.create(make_task(), None), HANG_GUARD)
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="cannot reopen"):
            await asyncio.wait_for(flaky.create(make_task(), None), HANG_GUARD)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(flaky.claim("w1", *_hours()), HANG_GUARD)


async def test_the_api_answers_503_tes_shaped_when_the_writer_cannot_go_on(flaky: FlakyStore) -> None:
    FlakyConnection.armed = {"COMMIT": 1, "ROLLBACK": 1}
    FlakyConnection.refuse_connect = True
    with pytest.raises(StoreError):
        await flaky.create(make_task(), None)
    app = create_app(Settings(), flaky)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tes.test"
    ) as client:
        body = {"executors": [{"image": "alpine", "command": ["true"]}]}
        response = await asyncio.wait_for(client.post("/ga4gh/tes/v1/tasks", json=body), HANG_GUARD)
    assert response.status_code == 503
    assert set(response.json()) == {"msg", "status_code"}


async def test_a_call_that_gets_no_answer_times_out_instead_of_waiting_for_ever(tmp_path: Path) -> None:
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"), call_timeout=0.5)
    await store.open()
    holder = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the timeout
        with pytest.raises(StoreError, match="did not answer"):
            await asyncio.wait_for(store.create(make_task(), None), HANG_GUARD)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_deleted_or_replaced_under_the_store_refuses_writes(
    store: SqliteTaskStore, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tasks.sqlite3"
    await store.create(make_task(), None)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        other = SqliteTaskStore(str(path))  # a fresh, empty database at the same path
        await other.open()
        await other.close()
    with caplog.at_level(logging.ERROR, logger="tesp_api.store.sqlite"):
        for _ in range(3):  # every write, not only the first
            with pytest.raises(StoreUnavailable, match=how):
                await store.create(make_task(), None)
    assert how in caplog.text


async def test_the_api_answers_503_when_the_database_file_was_deleted(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    app = create_app(Settings(), store)
    body = {"executors": [{"image": "alpine", "command": ["true"]}]}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tes.test"
    ) as client:
        assert (await client.post("/ga4gh/tes/v1/tasks", json=body)).status_code == 200
        os.remove(tmp_path / "tasks.sqlite3")
        for _ in range(10):
            response = await client.post("/ga4gh/tes/v1/tasks", json=body)
            assert response.status_code == 503, response.text
            assert set(response.json()) == {"msg", "status_code"}


async def test_an_idempotency_key_is_written_with_its_task_or_not_at_all(flaky: FlakyStore) -> None:
    from tesp_api.store.port import IdempotencyKey
    from tesp_api.store.records import utc_now

    key = IdempotencyKey("k", "body", utc_now() + timedelta(hours=1))
    FlakyConnection.armed = {"COMMIT": 1}  # the transaction holding task and key is rolled back
    with pytest.raises(StoreError):
        await flaky.create(make_task(), None, idempotency=key)
    assert await flaky.count() == 0
    record = await flaky.create(make_task(), None, idempotency=key)  # not a replay of a lost task
    assert (await flaky.get(record.id)) is not None
    assert (await flaky.create(make_task(), None, idempotency=key)).id == record.id
