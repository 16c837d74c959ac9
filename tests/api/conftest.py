"""The API in-process (httpx ASGITransport) around a real SQLite task store in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore

BASE = "/ga4gh/tes/v1"


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Default settings with some sections' keys overridden, e.g. api={"max_body_bytes": ...}."""
    return Settings.model_validate(sections)


def task_body(**fields: Any) -> dict[str, Any]:
    """The smallest valid task, with ``fields`` added or replaced."""
    body: dict[str, Any] = {"executors": [{"image": "alpine", "command": ["echo", "hello"]}]}
    body.update(fields)
    return body


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """For tests that run ``configure_logging`` (it replaces the root handlers): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings, store: SqliteTaskStore) -> FastAPI:
    return create_app(settings, store)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


@pytest.fixture
def client_for(store: SqliteTaskStore) -> Callable[..., httpx.AsyncClient]:
    """A client for an app built with other settings (close it with ``async with``)."""

    def make(settings: Settings, **kwargs: Any) -> httpx.AsyncClient:
        app = create_app(settings, store, **kwargs)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test")

    return make


async def create_task(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post(f"{BASE}/tasks", json=task_body(**fields))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def assert_tes_error(response: httpx.Response, status: int, *mentions: str) -> None:
    """A GA4GH ErrorResponse with this status whose message names each of ``mentions``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"msg", "status_code"}
    assert body["status_code"] == status
    for word in mentions:
        assert word in body["msg"], f"{word!r} not in {body['msg']!r}"
