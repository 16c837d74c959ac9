"""Attacks on create with malformed text and oversized tasks: each gets a 400 naming the field, and
nothing is stored.

The bodies are sent as raw JSON text, as an attacker would: ``"\\udc00"`` (a lone surrogate) and
``"\\u0000"`` are valid JSON escapes that ``json.loads`` turns into strings UTF-8 cannot hold or a
program argument cannot carry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, assert_tes_error, make_settings, task_body


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings, store: SqliteTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


async def post_raw(client: httpx.AsyncClient, text: str) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return await client.post(f"{BASE}/tasks", content=text.encode(), headers=headers)


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await post_raw(client, json.dumps(body))


EXECUTOR = '"executors":[{"image":"alpine","command":["echo"]}]'


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"name":"\\udc00",' + EXECUTOR + "}", "name"),
        ('{"name":"ok\\ud800tail",' + EXECUTOR + "}", "name"),
        ('{"executors":[{"image":"alpine","command":["echo","\\udfff"]}]}', "executors[0].command[1]"),
        ('{"executors":[{"image":"alpine","command":["echo"],"env":{"A":"\\udc00"}}]}', "executors[0].env.A"),
        ('{"inputs":[{"path":"/in","content":"\\udc00"}],' + EXECUTOR + "}", "inputs[0].content"),
        ('{"tags":{"k":"\\ud83d"},' + EXECUTOR + "}", "tags.k"),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    client: httpx.AsyncClient, store: SqliteTaskStore, text: str, field: str
) -> None:
    response = await post_raw(client, text)
    assert_tes_error(response, 400, field, "surrogate")
    assert await store.count() == 0


async def test_a_lone_surrogate_in_a_key_is_a_400_not_a_500(client: httpx.AsyncClient) -> None:
    response = await post_raw(client, '{"tags":{"\\udc00":"v"},' + EXECUTOR + "}")
    assert_tes_error(response, 400, "tags", "surrogate")
    unknown = await post_raw(client, '{"\\udc00":1,' + EXECUTOR + "}")
    assert_tes_error(unknown, 400, "surrogate")


async def test_a_paired_surrogate_escape_is_ordinary_text(client: httpx.AsyncClient) -> None:
    response = await post_raw(client, '{"name":"snake \\ud83d\\udc0d",' + EXECUTOR + "}")
    assert response.status_code == 200, response.text
    task = (await client.get(f"{BASE}/tasks/{response.json()['id']}", params={"view": "BASIC"})).json()
    assert task["name"] == "snake \U0001f40d"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"executors":[{"image":"alpine","command":["printf","a\\u0000b"]}]}', "executors[0].command[1]"),
        ('{"name":"n\\u0000",' + EXECUTOR + "}", "name"),
        (
            '{"executors":[{"image":"alpine","command":["echo"],"env":{"A":"x\\u0000"}}]}',
            "executors[0].env.A",
        ),
        ('{"inputs":[{"url":"http://h/x\\u0000y","path":"/in"}],' + EXECUTOR + "}", "inputs[0].url"),
        ('{"outputs":[{"url":"http://h/o","path":"/out\\u0000"}],' + EXECUTOR + "}", "outputs[0].path"),
        ('{"inputs":[{"path":"/in","content":"bin\\u0000ary"}],' + EXECUTOR + "}", "inputs[0].content"),
    ],
)
async def test_a_nul_character_is_a_400_naming_the_field_not_silently_dropped(
    client: httpx.AsyncClient, store: SqliteTaskStore, text: str, field: str
) -> None:
    response = await post_raw(client, text)
    assert_tes_error(response, 400, field, "NUL")
    assert await store.count() == 0


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"executors": [{"image": "alpine", "command": ["echo"]}] * 257}, ["executors", "256"]),
        ({"inputs": [{"path": f"/in/{i}", "content": "x"} for i in range(10001)]}, ["inputs", "10000"]),
        (
            {"outputs": [{"path": f"/o/{i}", "url": f"http://h/{i}"} for i in range(10001)]},
            ["outputs", "10000"],
        ),
        ({"volumes": [f"/v/{i}" for i in range(1001)]}, ["volumes", "1000"]),
        ({"tags": {f"k{i}": "" for i in range(1001)}}, ["tags", "1000"]),
        (
            {"executors": [{"image": "a", "command": ["echo"], "env": {f"V{i}": "" for i in range(1001)}}]},
            ["executors[0].env", "1000"],
        ),
        (
            {"executors": [{"image": "alpine", "command": ["x"] * 10001}]},
            ["executors[0].command", "10000", "api.max_command_arguments"],
        ),
        (
            {"executors": [{"image": "alpine", "command": ["echo", "a" * (1024 * 1024)]}]},
            ["executors[0]", "api.max_argument_bytes", str(1024 * 1024)],
        ),
        (
            {"executors": [{"image": "alpine", "command": ["echo"], "env": {"BIG": "b" * (1024 * 1024)}}]},
            ["executors[0]", "api.max_argument_bytes"],
        ),
        ({"name": "n" * 4097}, ["name", "4096"]),
        ({"description": "d" * 65537}, ["description", "65536"]),
        ({"inputs": [{"path": "/in", "url": "http://h/" + "u" * 65536}]}, ["inputs[0].url", "65536"]),
    ],
)
async def test_a_task_over_a_limit_is_a_400_naming_the_field_and_the_limit(
    client: httpx.AsyncClient, store: SqliteTaskStore, fields: dict[str, Any], mentions: list[str]
) -> None:
    response = await post(client, task_body(**fields))
    assert_tes_error(response, 400, *mentions)
    assert await store.count() == 0


@pytest.mark.parametrize(
    "settings",
    [make_settings(api={"max_body_bytes": 32 * 1024 * 1024, "max_task_content_bytes": 2 * 1024 * 1024})],
)
async def test_content_is_added_up_over_all_inputs(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    """Each input is under the per-input limit (1 MiB); three of them are over the task's 2 MiB."""
    part = "c" * (1024 * 1024 - 10)
    inputs = [{"path": f"/in/{i}", "content": part} for i in range(3)]
    response = await post(client, task_body(inputs=inputs))
    assert_tes_error(response, 400, "inputs", "api.max_task_content_bytes", str(2 * 1024 * 1024))
    assert await store.count() == 0
    ok = await post(client, task_body(inputs=inputs[:2]))
    assert ok.status_code == 200, ok.text


async def test_multibyte_text_is_counted_in_utf8_bytes(client: httpx.AsyncClient) -> None:
    """Four bytes per character: 300 000 characters are 1.2 MB, over the 1 MiB argument limit."""
    response = await post(client, task_body(executors=[{"image": "a", "command": ["\U0001f40d" * 300_000]}]))
    assert_tes_error(response, 400, "api.max_argument_bytes")


async def test_a_task_as_big_as_a_workflow_engine_sends_is_accepted(client: httpx.AsyncClient) -> None:
    """1000 inputs and outputs, a long bash -c script, 100 env entries: what Galaxy, Nextflow and
    Snakemake send, well inside the defaults."""
    script = "set -e\n" + "echo line\n" * 20_000
    body = task_body(
        name="galaxy-job-42",
        inputs=[{"url": f"s3://bucket/in/{i}", "path": f"/data/in/{i}"} for i in range(1000)],
        outputs=[{"url": f"s3://bucket/out/{i}", "path": f"/data/out/{i}"} for i in range(1000)],
        executors=[
            {
                "image": "quay.io/biocontainers/samtools:1.19",
                "command": ["/bin/bash", "-c", script],
                "env": {f"VAR_{i}": "value" for i in range(100)},
            }
        ],
        tags={f"tag{i}": "x" for i in range(50)},
    )
    response = await post(client, body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tasks?name_prefix=%ED%B0%80"),  # UTF-8 of a lone surrogate, percent-encoded
        ("GET", "/tasks?name_prefix=%00"),
        ("GET", "/tasks?tag_key=%ED%A0%80&tag_value=%00"),
        ("GET", "/tasks?view=%ED%B0%80"),
        ("GET", "/tasks?state=%00"),
        ("GET", "/tasks?page_token=%ED%B0%80"),
        ("GET", "/tasks/%ED%B0%80"),
        ("POST", "/tasks/%00:cancel"),
    ],
)
async def test_bad_text_in_the_url_is_a_client_error_never_a_500(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, BASE + path)
    assert response.status_code in (200, 400, 404), response.text
    assert response.json()  # a JSON answer, the connection intact
