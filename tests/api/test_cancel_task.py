"""POST /tasks/{id}:cancel: CANCELED at once, final states untouched, the engine told."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.api.conftest import BASE, assert_tes_error, create_task


async def cancel(client: httpx.AsyncClient, task_id: str) -> httpx.Response:
    return await client.post(f"{BASE}/tasks/{task_id}:cancel")


async def state_of(client: httpx.AsyncClient, task_id: str) -> str:
    return str((await client.get(f"{BASE}/tasks/{task_id}")).json()["state"])


async def test_cancel_answers_an_empty_object(client: httpx.AsyncClient) -> None:
    response = await cancel(client, await create_task(client))
    assert response.status_code == 200
    assert response.json() == {}


async def test_cancel_of_queued_task_makes_it_canceled_at_once(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    await cancel(client, task_id)
    assert await state_of(client, task_id) == "CANCELED"


async def test_cancel_of_running_task_makes_it_canceled_at_once(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task_id = await create_task(client)
    await store.update(task_id, state=TesState.RUNNING)
    await cancel(client, task_id)
    assert await state_of(client, task_id) == "CANCELED"


async def test_cancel_records_end_time_and_a_system_log_line(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    await cancel(client, task_id)
    task_log = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).json()["logs"][0]
    assert task_log["end_time"]
    assert task_log["system_logs"] == ["canceled by user"]


async def test_cancel_of_a_task_in_a_final_state_is_a_no_op(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task_id = await create_task(client)
    await store.update(task_id, state=TesState.COMPLETE)
    response = await cancel(client, task_id)
    assert (response.status_code, response.json()) == (200, {})
    assert await state_of(client, task_id) == "COMPLETE"


async def test_second_cancel_is_a_no_op(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    await cancel(client, task_id)
    response = await cancel(client, task_id)
    assert (response.status_code, response.json()) == (200, {})
    task_log = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).json()["logs"][0]
    assert task_log["system_logs"] == ["canceled by user"]


async def test_cancel_of_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert_tes_error(await cancel(client, "no-such-task"), 404, "no-such-task")


class RecordingEngine:
    """Not a stand-in for the engine's behaviour: it only records that the API called the
    ``notify_cancel`` seam, which is all the API layer is responsible for."""

    def __init__(self) -> None:
        self.canceled: list[str] = []

    async def notify_cancel(self, task_id: str) -> None:
        self.canceled.append(task_id)


async def test_cancel_tells_the_engine(
    client_for: Callable[..., httpx.AsyncClient], settings: Settings
) -> None:
    engine = RecordingEngine()
    async with client_for(settings, engine=engine) as client:
        task_id = await create_task(client)
        await cancel(client, task_id)
    assert engine.canceled == [task_id]


async def test_cancel_of_a_final_task_does_not_bother_the_engine(
    client_for: Callable[..., httpx.AsyncClient], settings: Settings, store: SqliteTaskStore
) -> None:
    engine = RecordingEngine()
    async with client_for(settings, engine=engine) as client:
        task_id = await create_task(client)
        await store.update(task_id, state=TesState.EXECUTOR_ERROR)
        await cancel(client, task_id)
    assert engine.canceled == []
