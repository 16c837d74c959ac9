"""GET /tasks: newest first, filters, opaque keyset paging."""

from __future__ import annotations

import httpx

from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.api.conftest import BASE, assert_tes_error, create_task


async def list_tasks(client: httpx.AsyncClient, **params: object) -> httpx.Response:
    return await client.get(f"{BASE}/tasks", params=params)  # type: ignore[arg-type]


async def ids(client: httpx.AsyncClient, **params: object) -> list[str]:
    response = await list_tasks(client, **params)
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["tasks"]]


async def test_empty_list_has_no_tasks_and_no_next_page_token(client: httpx.AsyncClient) -> None:
    assert (await list_tasks(client)).json() == {"tasks": []}


async def test_list_is_newest_first(client: httpx.AsyncClient) -> None:
    created = [await create_task(client) for _ in range(3)]
    assert await ids(client) == list(reversed(created))


async def test_list_uses_minimal_view_by_default(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client, name="n")
    assert (await list_tasks(client)).json()["tasks"] == [{"id": task_id, "state": "QUEUED"}]


async def test_list_renders_the_requested_view(client: httpx.AsyncClient) -> None:
    await create_task(client, name="n", inputs=[{"path": "/in", "content": "secret-ish"}])
    basic = (await list_tasks(client, view="BASIC")).json()["tasks"][0]
    full = (await list_tasks(client, view="FULL")).json()["tasks"][0]
    assert basic["name"] == "n" and "content" not in basic["inputs"][0]
    assert full["inputs"][0]["content"] == "secret-ish"


async def test_name_prefix_filters_by_plain_prefix(client: httpx.AsyncClient) -> None:
    wanted = await create_task(client, name="align_1")
    await create_task(client, name="call_1")
    await create_task(client, name="alignXsort")  # would match if "_" were a LIKE wildcard
    assert await ids(client, name_prefix="align_") == [wanted]


async def test_state_filters_by_state(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    running = await create_task(client)
    await create_task(client)
    await store.update(running, state=TesState.RUNNING)
    assert await ids(client, state="RUNNING") == [running]


async def test_unknown_state_filter_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, state="SLEEPING"), 400, "state")


async def test_tag_key_and_value_must_both_match(client: httpx.AsyncClient) -> None:
    wanted = await create_task(client, tags={"project": "p1", "user": "ann"})
    await create_task(client, tags={"project": "p2"})
    assert await ids(client, tag_key="project", tag_value="p1") == [wanted]


async def test_tag_pairs_are_zipped_and_all_must_match(client: httpx.AsyncClient) -> None:
    wanted = await create_task(client, tags={"project": "p1", "user": "ann"})
    await create_task(client, tags={"project": "p1", "user": "bob"})
    response = await client.get(
        f"{BASE}/tasks",
        params=[("tag_key", "project"), ("tag_value", "p1"), ("tag_key", "user"), ("tag_value", "ann")],
    )
    assert [t["id"] for t in response.json()["tasks"]] == [wanted]


async def test_tag_key_without_value_matches_any_value(client: httpx.AsyncClient) -> None:
    first = await create_task(client, tags={"project": "p1"})
    second = await create_task(client, tags={"project": ""})
    await create_task(client, tags={"other": "x"})
    assert await ids(client, tag_key="project") == [second, first]


async def test_tag_key_with_empty_value_matches_any_value(client: httpx.AsyncClient) -> None:
    tagged = await create_task(client, tags={"project": "p1"})
    await create_task(client)
    assert await ids(client, tag_key="project", tag_value="") == [tagged]


async def test_more_tag_values_than_keys_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, tag_value="x"), 400, "tag_value")


async def test_page_size_limits_the_page_and_gives_a_next_page_token(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await create_task(client)
    body = (await list_tasks(client, page_size=2)).json()
    assert len(body["tasks"]) == 2
    assert body["next_page_token"]


async def test_last_page_has_no_next_page_token(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await create_task(client)
    first = (await list_tasks(client, page_size=2)).json()
    last = (await list_tasks(client, page_size=2, page_token=first["next_page_token"])).json()
    assert len(last["tasks"]) == 1
    assert "next_page_token" not in last


async def test_a_page_that_holds_the_rest_exactly_has_no_next_page_token(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await create_task(client)
    assert "next_page_token" not in (await list_tasks(client, page_size=2)).json()


async def test_paging_returns_every_task_once_while_tasks_are_being_created(
    client: httpx.AsyncClient,
) -> None:
    existing = [await create_task(client) for _ in range(5)]
    seen: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, object] = {"page_size": 2}
        if token:
            params["page_token"] = token
        body = (await list_tasks(client, **params)).json()
        seen += [t["id"] for t in body["tasks"]]
        await create_task(client)  # newer tasks go before the cursor: they must not shift the pages
        token = body.get("next_page_token")
        if not token:
            break
    assert seen == list(reversed(existing))


async def test_page_size_zero_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, page_size=0), 400, "page_size")


async def test_page_size_2048_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, page_size=2048), 400, "page_size")


async def test_page_size_2047_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await list_tasks(client, page_size=2047)).status_code == 200


async def test_non_numeric_page_size_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, page_size="ten"), 400, "page_size")


async def test_malformed_page_token_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, page_token="not-a-token"), 400, "page_token")


async def test_unknown_view_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await list_tasks(client, view="minimal-ish"), 400, "view")
