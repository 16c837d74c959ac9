"""POST /tasks with an Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header): a retry
returns the first task, whatever happened to the first answer; docs/api.md, "Idempotent create"."""

from __future__ import annotations

import json

import httpx
import pytest

from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, assert_tes_error, task_body


async def post(client: httpx.AsyncClient, body: object, key: str | None, base: str = BASE) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await client.post(f"{base}/tasks", content=content, headers=headers)


async def test_a_retry_with_the_same_key_and_body_returns_the_first_task(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    first = await post(client, task_body(name="once"), "retry-1")
    # The client never saw that answer (timeout, dropped connection) and sends the request again.
    again = await post(client, task_body(name="once"), "retry-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert await store.count() == 1


async def test_without_the_header_every_post_makes_a_task(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    await post(client, task_body(), None)
    await post(client, task_body(), None)
    assert await store.count() == 2


async def test_the_same_key_with_another_body_is_a_409_and_makes_nothing(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    await post(client, task_body(name="a"), "k")
    response = await post(client, task_body(name="b"), "k")
    assert_tes_error(response, 409, "Idempotency-Key", "different request body")
    assert await store.count() == 1


async def test_whitespace_and_key_order_do_not_make_another_body(client: httpx.AsyncClient) -> None:
    body = task_body(name="n", description="d")
    first = await post(client, json.dumps(body), "k")
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=4)
    assert (await post(client, reordered, "k")).json() == first.json()


async def test_a_quoted_structured_field_key_and_the_bare_key_are_the_same_key(
    client: httpx.AsyncClient,
) -> None:
    first = await post(client, task_body(), '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    again = await post(client, task_body(), "8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert again.json() == first.json()


async def test_a_retry_on_the_other_base_path_returns_the_first_task(client: httpx.AsyncClient) -> None:
    first = await post(client, task_body(), "k")
    assert (await post(client, task_body(), "k", base="/v1")).json() == first.json()


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("x" * 256, "at most 255"), ("caf\u00e9", "printable ASCII"), ('"a"b"', "quote")],
)
async def test_a_malformed_key_is_a_400_naming_the_header(
    client: httpx.AsyncClient, store: SqliteTaskStore, key: str, reason: str
) -> None:
    headers = {
        b"Content-Type": b"application/json",
        b"Idempotency-Key": key.encode(),
    }  # UTF-8 bytes on the wire
    response = await client.post(f"{BASE}/tasks", content=json.dumps(task_body()), headers=headers)
    assert_tes_error(response, 400, "Idempotency-Key", reason)
    assert await store.count() == 0


async def test_an_invalid_task_with_a_key_is_a_400_and_the_key_stays_free(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    assert (await post(client, {"executors": []}, "k")).status_code == 400
    assert (await post(client, task_body(), "k")).status_code == 200
    assert await store.count() == 1
