"""Paths, 404s, the docs redirect, OpenAPI, error shape, and the principal seam."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.api.deps import Principal, current_principal
from tesp_api.config.settings import Settings
from tesp_api.store.port import Owner
from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, assert_tes_error, create_task, task_body

ODD_IDS = ["no-such-task", "a..b", "x" * 300, "with space", "semi;colon", "%00", "ünïcode", "1"]


@pytest.mark.parametrize("task_id", ODD_IDS)
async def test_get_of_an_unknown_task_id_is_404_whatever_the_id(
    client: httpx.AsyncClient, task_id: str
) -> None:
    assert_tes_error(await client.get(f"{BASE}/tasks/{task_id}"), 404)


@pytest.mark.parametrize("task_id", ODD_IDS)
async def test_cancel_of_an_unknown_task_id_is_404_whatever_the_id(
    client: httpx.AsyncClient, task_id: str
) -> None:
    assert_tes_error(await client.post(f"{BASE}/tasks/{task_id}:cancel"), 404)


async def test_id_with_a_slash_is_404(client: httpx.AsyncClient) -> None:
    assert_tes_error(await client.get(f"{BASE}/tasks/a%2Fb"), 404)


async def test_v1_prefix_serves_the_same_tasks(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client)
    response = await client.get(f"/v1/tasks/{task_id}")
    assert response.json() == {"id": task_id, "state": "QUEUED"}
    assert [t["id"] for t in (await client.get("/v1/tasks")).json()["tasks"]] == [task_id]


async def test_v1_prefix_accepts_create_and_cancel(client: httpx.AsyncClient) -> None:
    task_id = (await client.post("/v1/tasks", json=task_body())).json()["id"]
    assert (await client.post(f"/v1/tasks/{task_id}:cancel")).json() == {}
    assert (await client.get(f"{BASE}/tasks/{task_id}")).json()["state"] == "CANCELED"


async def test_root_redirects_to_the_swagger_ui(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.is_redirect
    assert response.headers["location"] == "/docs"
    assert (await client.get("/docs")).status_code == 200


async def test_openapi_document_lists_the_tes_operations(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    operations = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert operations == {"GetServiceInfo", "ListTasks", "CreateTask", "GetTask", "CancelTask"}
    assert "tesTask" in doc["components"]["schemas"]
    assert f"{BASE}/tasks/{{id}}:cancel" in doc["paths"]


async def test_unknown_path_is_a_tes_shaped_404(client: httpx.AsyncClient) -> None:
    assert_tes_error(await client.get(f"{BASE}/jobs"), 404)


async def test_wrong_method_is_a_tes_shaped_405(client: httpx.AsyncClient) -> None:
    assert_tes_error(await client.delete(f"{BASE}/tasks"), 405)


async def test_no_request_ever_gets_fastapis_422(client: httpx.AsyncClient) -> None:
    responses = [
        await client.get(f"{BASE}/tasks", params={"page_size": "x"}),
        await client.get(f"{BASE}/tasks", params={"view": "x"}),
        await client.post(f"{BASE}/tasks", json={"executors": "x"}),
        await client.post(f"{BASE}/tasks", json=None),
        await client.get(f"{BASE}/tasks/x", params={"view": "nope"}),
    ]
    assert [r.status_code for r in responses] == [400] * len(responses)


def as_user(app: FastAPI, subject: str) -> None:
    principal = Principal(owner=Owner(subject=subject, issuer="test"), is_admin=False)
    app.dependency_overrides[current_principal] = lambda: principal


async def test_a_user_does_not_see_another_users_task(app: FastAPI, client: httpx.AsyncClient) -> None:
    as_user(app, "ann")
    task_id = await create_task(client)
    as_user(app, "bob")
    assert_tes_error(await client.get(f"{BASE}/tasks/{task_id}"), 404)
    assert_tes_error(await client.post(f"{BASE}/tasks/{task_id}:cancel"), 404)
    assert (await client.get(f"{BASE}/tasks")).json() == {"tasks": []}


async def test_an_admin_sees_every_users_task(app: FastAPI, client: httpx.AsyncClient) -> None:
    as_user(app, "ann")
    task_id = await create_task(client)
    app.dependency_overrides[current_principal] = lambda: Principal(owner=None, is_admin=True)
    assert (await client.get(f"{BASE}/tasks/{task_id}")).status_code == 200


async def test_the_owner_is_never_rendered(app: FastAPI, client: httpx.AsyncClient) -> None:
    as_user(app, "ann")
    task_id = await create_task(client)
    task = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).json()
    assert "ann" not in str(task)


def test_the_app_keeps_the_authenticator_for_the_principal_dependency(
    settings: Settings, store: SqliteTaskStore
) -> None:
    marker = object()
    assert create_app(settings, store, authenticator=marker).state.authenticator is marker
