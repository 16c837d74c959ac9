"""HEAD on every GET endpoint answers like GET without a body (issue 13): same status, same headers."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import BASE, create_task

GET_PATHS = [
    f"{BASE}/service-info",
    f"{BASE}/tasks",
    "/v1/tasks",
    "/v1/tasks/service-info",
    "/service-info",
    "/openapi.json",
    "/docs",
    "/dashboard",
]


async def _same_as_get(client: httpx.AsyncClient, path: str) -> None:
    get = await client.get(path)
    head = await client.head(path)
    assert head.status_code == get.status_code, head.text
    assert head.content == b""
    assert head.headers.get("content-length") == get.headers.get("content-length", str(len(get.content)))
    assert head.headers.get("content-type") == get.headers.get("content-type")


@pytest.mark.parametrize("path", GET_PATHS)
async def test_head_answers_like_get_without_a_body(client: httpx.AsyncClient, path: str) -> None:
    await _same_as_get(client, path)


async def test_head_on_a_task_answers_like_get_without_a_body(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    await _same_as_get(client, f"{BASE}/tasks/{task_id}?view=FULL")


async def test_head_on_a_missing_task_is_a_404_like_get(client: httpx.AsyncClient) -> None:
    head = await client.head(f"{BASE}/tasks/no-such-task")
    assert (head.status_code, head.content) == (404, b"")


async def test_head_on_the_root_redirects_like_get(client: httpx.AsyncClient) -> None:
    get, head = await client.get("/"), await client.head("/")
    assert head.status_code == get.status_code
    assert head.headers.get("location") == get.headers.get("location")


async def test_head_never_runs_a_post_handler(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    head = await client.head(f"{BASE}/tasks/{task_id}:cancel")
    assert head.status_code == (await client.get(f"{BASE}/tasks/{task_id}:cancel")).status_code
    assert (await client.get(f"{BASE}/tasks/{task_id}")).json()["state"] != "CANCELED"
