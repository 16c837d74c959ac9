"""/dashboard over HTTP: the page and its assets come from tesp-api, its helpers answer as documented
(docs/dashboard.md). What a person sees is tested in a browser in tests/browser/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tesp_api.auth.passwords import hash_password
from tesp_api.metrics import pulsar_request
from tests.api.conftest import BASE, assert_tes_error, make_settings, task_body

PASSWORDS = {"ann": "ann-pass", "root": "root-pass"}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": httpx.BasicAuth(user, PASSWORDS[user])._auth_header}


@pytest.fixture
async def auth_client(client_for: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    users = [
        {"username": "ann", "password_hash": hash_password(PASSWORDS["ann"], log2_n=10)},
        {"username": "root", "password_hash": hash_password(PASSWORDS["root"], log2_n=10), "admin": True},
    ]
    async with client_for(make_settings(auth={"mode": "basic", "users": users})) as client:
        yield client


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/", "/dashboard/service", "/dashboard/tasks/abc"])
async def test_every_dashboard_address_serves_the_page(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="tasks"' in response.text


async def test_the_page_forbids_inline_script_and_other_origins(client: httpx.AsyncClient) -> None:
    headers = (await client.get("/dashboard")).headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"


async def test_every_asset_of_the_page_is_served_here(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    assets = re.findall(r"""(?:src|href)="(/[^"]+\.(?:js|css|ico))\"""", html)
    assert {a.rsplit(".", 1)[-1] for a in assets} == {"js", "css", "ico"}
    for asset in assets:
        assert (await client.get(asset)).status_code == 200, asset
    assert not re.search(r"""(?:src|href)="(?:https?:)?//""", html)


async def test_the_page_has_no_inline_script(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []


async def test_config_tells_the_sign_in_methods(auth_client: httpx.AsyncClient) -> None:
    config = (await auth_client.get("/dashboard/api/config")).json()
    assert config == {"auth_modes": ["basic"], "api_base": BASE}


async def test_whoami_without_credentials_does_not_make_the_browser_prompt(
    auth_client: httpx.AsyncClient,
) -> None:
    response = await auth_client.get("/dashboard/api/whoami")
    assert_tes_error(response, 401)
    assert "www-authenticate" not in response.headers


async def test_whoami_with_prompt_asks_for_basic_credentials(auth_client: httpx.AsyncClient) -> None:
    response = await auth_client.get("/dashboard/api/whoami", params={"prompt": "1"})
    assert_tes_error(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("basic")


async def test_whoami_names_the_user_and_whether_they_are_an_administrator(
    auth_client: httpx.AsyncClient,
) -> None:
    assert (await auth_client.get("/dashboard/api/whoami", headers=basic("ann"))).json() == {
        "user": "ann",
        "admin": False,
    }
    assert (await auth_client.get("/dashboard/api/whoami", headers=basic("root"))).json()["admin"] is True


async def test_owners_are_shown_to_administrators(auth_client: httpx.AsyncClient) -> None:
    created = await auth_client.post(f"{BASE}/tasks", json=task_body(), headers=basic("ann"))
    task_id = created.json()["id"]
    owners = await auth_client.get(
        "/dashboard/api/owners", params=[("id", task_id), ("id", "no-such-task")], headers=basic("root")
    )
    assert owners.json() == {task_id: "ann"}


async def test_owners_are_refused_to_other_users(auth_client: httpx.AsyncClient) -> None:
    created = await auth_client.post(f"{BASE}/tasks", json=task_body(), headers=basic("ann"))
    response = await auth_client.get(
        "/dashboard/api/owners", params={"id": created.json()["id"]}, headers=basic("ann")
    )
    assert_tes_error(response, 403)


async def test_owners_are_refused_without_credentials(auth_client: httpx.AsyncClient) -> None:
    assert_tes_error(await auth_client.get("/dashboard/api/owners", params={"id": "x"}), 401)


async def test_owners_takes_a_bounded_number_of_ids(auth_client: httpx.AsyncClient) -> None:
    params = [("id", f"t{i}") for i in range(257)]
    assert_tes_error(
        await auth_client.get("/dashboard/api/owners", params=params, headers=basic("root")), 400
    )


async def test_the_dashboard_helpers_are_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]


async def test_the_pulsar_servers_are_listed_by_name_with_their_last_contact(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(
        pulsar={
            "servers": [
                {"name": "hpc-a", "url": "http://10.0.0.5:8913", "private_token": "s3cret"},
                {"name": "cloud-b", "amqp_url": "amqp://user:pw@broker:5672//"},
            ]
        }
    )
    with pulsar_request("hpc-a") as seen:
        seen.status = 200
    async with client_for(settings) as client:
        response = await client.get("/dashboard/api/pulsar")
    servers = {s["name"]: s for s in response.json()}
    assert servers["hpc-a"]["transport"] == "rest" and servers["hpc-a"]["health"] == "ok"
    assert servers["cloud-b"] == {
        "name": "cloud-b",
        "transport": "amqp",
        "health": "unknown",
        "last_contact": None,
    }
    assert "10.0.0.5" not in response.text and "s3cret" not in response.text and "pw@" not in response.text


async def test_the_pulsar_servers_need_credentials_under_auth(auth_client: httpx.AsyncClient) -> None:
    assert_tes_error(await auth_client.get("/dashboard/api/pulsar"), 401)
    assert (await auth_client.get("/dashboard/api/pulsar", headers=basic("ann"))).status_code == 200
