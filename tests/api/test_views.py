"""GET /tasks/{id}?view=...: each view's exact field set, and nothing outside the TES spec."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import httpx

from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesExecutorLog, TesOutputFileLog, TesState, TesTask
from tests.api.conftest import BASE, assert_tes_error, create_task

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


async def finished_task(client: httpx.AsyncClient, store: SqliteTaskStore) -> str:
    """A task with every kind of log: executor stdout/stderr, an output, a system log line."""
    task_id = await create_task(
        client,
        name="full",
        tags={"project": "p1"},
        inputs=[{"path": "/data/script.sh", "content": "echo hi"}],
        outputs=[{"path": "/data/out.txt", "url": "http://h/out.txt"}],
    )
    patch = LogPatch(
        start_time="2026-01-01T00:00:00Z",
        end_time="2026-01-01T00:01:00Z",
        system_logs=["ran on worker-1"],
        executor_logs={0: TesExecutorLog(exit_code=0, stdout="hello\n", stderr="warn\n")},
        outputs=[TesOutputFileLog(url="http://h/out.txt", path="/data/out.txt", size_bytes="6")],
    )
    assert await store.update(task_id, state=TesState.COMPLETE, log=patch) is not None
    return task_id


async def get(client: httpx.AsyncClient, task_id: str, view: str | None = None) -> httpx.Response:
    params = {"view": view} if view else {}
    return await client.get(f"{BASE}/tasks/{task_id}", params=params)


async def test_minimal_is_the_default_view_with_only_id_and_state(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client, name="n")
    assert (await get(client, task_id)).json() == {"id": task_id, "state": "QUEUED"}


async def test_minimal_view_has_only_id_and_state(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    task_id = await finished_task(client, store)
    assert (await get(client, task_id, "MINIMAL")).json() == {"id": task_id, "state": "COMPLETE"}


async def test_basic_view_omits_input_content_executor_output_and_system_logs(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task = (await get(client, await finished_task(client, store), "BASIC")).json()
    assert set(task) == {
        "id",
        "state",
        "name",
        "inputs",
        "outputs",
        "executors",
        "tags",
        "creation_time",
        "logs",
    }
    assert task["inputs"] == [{"path": "/data/script.sh"}]
    task_log = task["logs"][0]
    assert set(task_log) == {"start_time", "end_time", "logs", "outputs"}
    assert task_log["logs"] == [{"exit_code": 0}]
    assert task_log["outputs"] == [{"url": "http://h/out.txt", "path": "/data/out.txt", "size_bytes": "6"}]


async def test_full_view_has_input_content_executor_output_and_system_logs(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task = (await get(client, await finished_task(client, store), "FULL")).json()
    assert task["inputs"] == [{"path": "/data/script.sh", "content": "echo hi"}]
    task_log = task["logs"][0]
    assert task_log["logs"] == [{"exit_code": 0, "stdout": "hello\n", "stderr": "warn\n"}]
    assert task_log["system_logs"] == ["ran on worker-1"]


async def test_full_view_carries_no_field_outside_the_spec(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task = (await get(client, await finished_task(client, store), "FULL")).json()
    TesTask.model_validate(task)  # the models forbid unknown fields at every level
    assert "owner" not in task and "backend" not in task


async def test_no_null_values_are_rendered(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    task = (await get(client, await finished_task(client, store), "FULL")).json()
    assert "null" not in json.dumps(task)


async def test_creation_time_is_rfc3339_in_utc(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    task = (await get(client, await create_task(client), "BASIC")).json()
    assert RFC3339_UTC.match(task["creation_time"])
    created = datetime.fromisoformat(task["creation_time"])
    assert created >= before


async def test_queued_task_without_any_log_has_no_logs(client: httpx.AsyncClient) -> None:
    task = (await get(client, await create_task(client), "FULL")).json()
    assert "logs" not in task


async def test_started_task_has_one_task_log(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    task_id = await create_task(client)
    await store.update(task_id, state=TesState.INITIALIZING, log=LogPatch(start_time="2026-01-01T00:00:00Z"))
    task = (await get(client, task_id, "BASIC")).json()
    assert task["logs"] == [{"start_time": "2026-01-01T00:00:00Z", "logs": [], "outputs": []}]


async def test_unknown_view_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await get(client, await create_task(client), "EVERYTHING"), 400, "view")
