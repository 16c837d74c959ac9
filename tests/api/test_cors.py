"""CORS: off by default; ``api.cors_origins`` lets listed browser origins call the API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.api.conftest import BASE, assert_tes_error, make_settings, task_body

APP_ORIGIN = "https://app.example.org"
PREFLIGHT = {
    "Origin": APP_ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture
async def cors_client(client_for: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_settings(api={"cors_origins": [APP_ORIGIN]})) as client:
        yield client


async def test_without_cors_origins_a_preflight_is_not_answered_with_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options(f"{BASE}/tasks", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers
    assert_tes_error(response, 405)


async def test_a_preflight_for_create_task_from_a_listed_origin_succeeds(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(f"{BASE}/tasks", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


async def test_an_answer_to_a_listed_origin_carries_its_allow_origin(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.post(f"{BASE}/tasks", json=task_body(), headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_an_error_answer_carries_the_cors_headers_too(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.get(f"{BASE}/tasks/nope", headers={"Origin": APP_ORIGIN})
    assert_tes_error(response, 404)
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_credentials_are_never_allowed_cross_origin(cors_client: httpx.AsyncClient) -> None:
    # A listed page must send its own Authorization header; the browser's cached Basic login to
    # tesp-api (the dashboard's prompt) is never usable from another origin.
    response = await cors_client.options(f"{BASE}/tasks", headers=PREFLIGHT)
    assert "access-control-allow-credentials" not in response.headers


async def test_a_preflight_from_an_unlisted_origin_is_refused_as_a_tes_error(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(
        f"{BASE}/tasks", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert_tes_error(response, 400, "origin")
    assert response.headers.get("access-control-allow-origin") != "https://evil.example"


async def test_an_unlisted_origin_gets_no_allow_origin_on_a_simple_request(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.get(f"{BASE}/tasks", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_a_star_allows_any_origin_without_credentials(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    async with client_for(make_settings(api={"cors_origins": ["*"]})) as client:
        response = await client.options(
            f"{BASE}/tasks", headers={**PREFLIGHT, "Origin": "https://any.example"}
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
