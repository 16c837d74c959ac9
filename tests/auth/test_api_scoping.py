"""Authentication and per-user task scoping through the real app (in-process ASGI, SQLite store)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tests.auth.conftest import AUDIENCE, basic_settings, cheap_hash, settings_with
from tests.services.oidc_issuer import LocalOidcIssuer

BASE = "/ga4gh/tes/v1"
TASK = {"executors": [{"image": "alpine", "command": ["echo", "hi"]}]}


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


ALICE, BOB, ROOT = basic("alice", "alice-pw"), basic("bob", "bob-pw"), basic("root", "root-pw")


async def client_for(settings: Settings, store: SqliteTaskStore) -> httpx.AsyncClient:
    app: FastAPI = create_app(settings, store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test")


@pytest.fixture
async def client(store: SqliteTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(basic_settings(), store) as c:
        yield c


async def create(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post(f"{BASE}/tasks", json=TASK, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def listed_ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["tasks"]}


async def test_a_request_without_credentials_is_a_tes_shaped_401_with_a_challenge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(f"{BASE}/tasks")
    assert response.status_code == 401
    assert response.json() == {"msg": "authentication required", "status_code": 401}
    assert response.headers["www-authenticate"] == 'Basic realm="tesp-api", charset="UTF-8"'


@pytest.mark.parametrize(
    "value", ["Basic", "Basic %%%", "Basic " + base64.b64encode(b"\xff").decode(), "Token x"]
)
async def test_a_garbled_authorization_header_is_a_401_never_a_500(
    client: httpx.AsyncClient, value: str
) -> None:
    response = await client.post(f"{BASE}/tasks", json=TASK, headers={"Authorization": value})
    assert response.status_code == 401
    assert response.json()["status_code"] == 401


async def test_a_wrong_password_is_a_401(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/tasks", headers=basic("alice", "bob-pw"))
    assert response.status_code == 401
    assert "bob-pw" not in response.text


async def test_service_info_is_open_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{BASE}/service-info")).status_code == 200


async def test_service_info_can_be_protected(store: SqliteTaskStore) -> None:
    async with await client_for(basic_settings(service_info_public=False), store) as c:
        assert (await c.get(f"{BASE}/service-info")).status_code == 401
        assert (await c.get(f"{BASE}/service-info", headers=ALICE)).status_code == 200


async def test_a_user_lists_only_their_own_tasks(client: httpx.AsyncClient) -> None:
    alices = {await create(client, ALICE), await create(client, ALICE)}
    bobs = {await create(client, BOB)}
    assert listed_ids(await client.get(f"{BASE}/tasks", headers=ALICE)) == alices
    assert listed_ids(await client.get(f"{BASE}/tasks", headers=BOB)) == bobs


async def test_another_users_task_is_not_found(client: httpx.AsyncClient) -> None:
    task_id = await create(client, ALICE)
    response = await client.get(f"{BASE}/tasks/{task_id}", headers=BOB)
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


async def test_another_users_task_cannot_be_canceled(client: httpx.AsyncClient) -> None:
    task_id = await create(client, ALICE)
    assert (await client.post(f"{BASE}/tasks/{task_id}:cancel", headers=BOB)).status_code == 404
    task = (await client.get(f"{BASE}/tasks/{task_id}", headers=ALICE)).json()
    assert task["state"] != "CANCELED"


async def test_the_owner_can_get_and_cancel_their_task(client: httpx.AsyncClient) -> None:
    task_id = await create(client, ALICE)
    assert (await client.get(f"{BASE}/tasks/{task_id}", headers=ALICE)).status_code == 200
    assert (await client.post(f"{BASE}/tasks/{task_id}:cancel", headers=ALICE)).status_code == 200


async def test_an_admin_sees_and_cancels_every_users_tasks(client: httpx.AsyncClient) -> None:
    alices, bobs = await create(client, ALICE), await create(client, BOB)
    assert listed_ids(await client.get(f"{BASE}/tasks", headers=ROOT)) == {alices, bobs}
    assert (await client.get(f"{BASE}/tasks/{bobs}", headers=ROOT)).status_code == 200
    assert (await client.post(f"{BASE}/tasks/{alices}:cancel", headers=ROOT)).status_code == 200
    assert (await client.get(f"{BASE}/tasks/{alices}", headers=ALICE)).json()["state"] == "CANCELED"


async def test_the_owner_is_never_part_of_a_task_answer(client: httpx.AsyncClient) -> None:
    task_id = await create(client, ALICE)
    full = await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"}, headers=ALICE)
    listed = await client.get(f"{BASE}/tasks", params={"view": "FULL"}, headers=ROOT)
    for text in (full.text, listed.text):
        assert "alice" not in text and "owner" not in text


async def test_the_v1_alias_is_protected_too(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/tasks")).status_code == 401


async def test_the_openapi_document_declares_both_schemes_for_swagger(
    store: SqliteTaskStore, issuer: LocalOidcIssuer
) -> None:
    settings = settings_with(
        mode=["basic", "oidc"],
        users=[{"username": "a", "password_hash": cheap_hash("p")}],
        issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE}],
    )
    async with await client_for(settings, store) as c:
        response = await c.get("/openapi.json")
        assert response.status_code == 200
        document = response.json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["basicAuth"] == {"type": "http", "scheme": "basic", "description": "a user of auth.users"}
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"basicAuth": []}, {"bearerAuth": []}]


async def test_swagger_ui_stays_reachable_without_credentials(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200


async def test_bearer_users_are_scoped_by_subject_and_issuer(
    store: SqliteTaskStore, issuer: LocalOidcIssuer
) -> None:
    settings = settings_with(
        mode="oidc",
        issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE}],
        admin_values=["tes-admins"],
    )
    alice = {"Authorization": f"Bearer {issuer.mint('alice')}"}
    bob = {"Authorization": f"Bearer {issuer.mint('bob')}"}
    admin = {"Authorization": f"Bearer {issuer.mint('carol', groups=['tes-admins'])}"}
    async with await client_for(settings, store) as c:
        task_id = await create(c, alice)
        assert (await c.get(f"{BASE}/tasks/{task_id}", headers=bob)).status_code == 404
        assert listed_ids(await c.get(f"{BASE}/tasks", headers=bob)) == set()
        assert listed_ids(await c.get(f"{BASE}/tasks", headers=admin)) == {task_id}


async def test_an_unreachable_issuer_is_a_tes_shaped_503(
    store: SqliteTaskStore, issuer: LocalOidcIssuer
) -> None:
    settings = settings_with(mode="oidc", issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE}])
    token = issuer.mint("alice")
    issuer.stop()
    async with await client_for(settings, store) as c:
        response = await c.get(f"{BASE}/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response.json()["status_code"] == 503
    assert "retry-after" in response.headers


async def test_an_invalid_token_gets_an_invalid_token_challenge(
    store: SqliteTaskStore, issuer: LocalOidcIssuer
) -> None:
    settings = settings_with(mode="oidc", issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE}])
    async with await client_for(settings, store) as c:
        response = await c.get(
            f"{BASE}/tasks", headers={"Authorization": f"Bearer {issuer.mint(audience='x')}"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="tesp-api", error="invalid_token"')
