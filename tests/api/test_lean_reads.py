"""MINIMAL reads never decode a task's JSON (issue 15): the list page and GET of the MINIMAL view come
from the store's columns. Proved on the real SQLite store by making a row's task JSON unreadable:
MINIMAL still answers it, the views that need the JSON do not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, create_task


def break_task_json(tmp_path: Path, task_id: str) -> None:
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
        conn.execute("UPDATE tasks SET task_json = 'not json' WHERE id = ?", (task_id,))


async def test_minimal_list_answers_without_decoding_task_json(
    client: httpx.AsyncClient, store: SqliteTaskStore, tmp_path: Path
) -> None:
    task_id = await create_task(client)
    break_task_json(tmp_path, task_id)
    answer = await client.get(f"{BASE}/tasks")
    assert answer.status_code == 200
    assert answer.json() == {"tasks": [{"id": task_id, "state": "QUEUED"}]}
    assert (await client.get(f"{BASE}/tasks", params={"view": "BASIC"})).status_code == 503


async def test_minimal_get_answers_without_decoding_task_json(
    client: httpx.AsyncClient, store: SqliteTaskStore, tmp_path: Path
) -> None:
    task_id = await create_task(client)
    break_task_json(tmp_path, task_id)
    answer = await client.get(f"{BASE}/tasks/{task_id}")
    assert answer.status_code == 200
    assert answer.json() == {"id": task_id, "state": "QUEUED"}
    assert (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).status_code == 503


async def test_minimal_list_pages_follow_on_with_the_full_views_tokens(client: httpx.AsyncClient) -> None:
    ids = [await create_task(client) for _ in range(5)]
    first = (await client.get(f"{BASE}/tasks", params={"page_size": 2, "view": "BASIC"})).json()
    rest = (
        await client.get(f"{BASE}/tasks", params={"page_size": 10, "page_token": first["next_page_token"]})
    ).json()
    assert [t["id"] for t in first["tasks"] + rest["tasks"]] == ids[::-1]
    assert "next_page_token" not in rest
