"""Attacks refused at admission: POST /tasks answers a TES-shaped 400 naming the field, and nothing is stored.

Each value here would reach a container runtime's command line, a mount specification or an env file
if it were accepted (issue 10: ``"image": "--privileged"`` rendered ``docker run ... --privileged -v
/:/host alpine chroot /host id``, root on the Pulsar host). The JobPlan (tesp_api/tes/jobplan.py)
refuses them before the task exists; the engine builds the same plan from the stored task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, assert_tes_error, make_settings

EXECUTOR: dict[str, Any] = {"image": "alpine", "command": ["true"]}


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings, store: SqliteTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


async def refused(
    client: httpx.AsyncClient, store: SqliteTaskStore, body: dict[str, Any], *mentions: str
) -> None:
    """``body`` gets a TES-shaped 400 naming each of ``mentions``, and no task is stored."""
    assert_tes_error(await client.post(f"{BASE}/tasks", json=body), 400, *mentions)
    assert await store.count() == 0


def with_executor(**fields: Any) -> dict[str, Any]:
    return {"executors": [{**EXECUTOR, **fields}]}


async def test_the_issue_option_injection_through_image_is_400(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    body = {
        "executors": [
            {"image": "--privileged", "command": ["-v", "/:/host", "alpine", "chroot", "/host", "id"]}
        ]
    }
    await refused(client, store, body, "executors[0].image", "--privileged")


@pytest.mark.parametrize(
    "image",
    [
        "-v",
        "--rm",
        "-e=X",
        "--volume=/:/host",
        "--privileged=true",
        " --privileged",
        "alpine --privileged",
        "alpine\n--privileged",
        "docker://--privileged",
        "-",
        "Alpine",
    ],
)
async def test_option_like_or_malformed_images_are_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, image: str
) -> None:
    await refused(client, store, with_executor(image=image), "executors[0].image")


@pytest.mark.parametrize("field", ["workdir", "stdin", "stdout", "stderr"])
@pytest.mark.parametrize("value", ["--privileged", "-v", "/:/host", "/a,b", "/x\n-y"])
async def test_option_like_or_separator_executor_paths_are_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, field: str, value: str
) -> None:
    await refused(client, store, with_executor(**{field: value}), f"executors[0].{field}")


@pytest.mark.parametrize(
    "volume",
    [
        "--privileged",
        "-v",
        "/:/host",
        "/data:/host:rw",
        "/a,readonly=false",
        "/",
        "/usr",
        "/etc",
        "/proc/sys",
    ],
)
async def test_option_like_separator_or_system_volumes_are_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, volume: str
) -> None:
    await refused(client, store, {**with_executor(), "volumes": [volume]}, "volumes[0]")


DOTDOT_FORMS = ["/a/../b", "/a/..", "/..", "/../etc/passwd", "/a/b/../../../etc", "/data/x/../"]


@pytest.mark.parametrize(
    ("where", "path"),
    [("volumes", p) for p in DOTDOT_FORMS]
    + [(w, DOTDOT_FORMS[1]) for w in ("inputs", "outputs", "workdir", "stdout", "stdin")],
)
async def test_dotdot_in_every_form_is_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, path: str, where: str
) -> None:
    body: dict[str, Any]
    if where == "inputs":
        body, field = {**with_executor(), "inputs": [{"path": path, "content": "x"}]}, "inputs[0].path"
    elif where == "outputs":
        body, field = {**with_executor(), "outputs": [{"path": path, "url": "http://h/o"}]}, "outputs[0].path"
    elif where == "volumes":
        body, field = {**with_executor(), "volumes": [path]}, "volumes[0]"
    else:
        body, field = with_executor(**{where: path}), f"executors[0].{where}"
    await refused(client, store, body, field, "..")


@pytest.mark.parametrize(
    "escaped", [r"/a/\u002e\u002e/b", r"/a/.\u002e", r"/\u002E\u002E/etc", r"/a\u002f..\u002fb"]
)
async def test_json_escaped_dotdot_is_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, escaped: str
) -> None:
    """JSON escapes are decoded before any check: ``\\u002e\\u002e`` is ``..``."""
    text = '{"executors": [{"image": "alpine", "command": ["true"]}], "volumes": ["' + escaped + '"]}'
    response = await client.post(
        f"{BASE}/tasks", content=text.encode(), headers={"content-type": "application/json"}
    )
    assert_tes_error(response, 400, "volumes[0]", "..")
    assert await store.count() == 0


async def test_percent_encoded_dotdot_is_a_plain_name_that_stays_in_place(client: httpx.AsyncClient) -> None:
    """Container paths are never URL-decoded: ``%2e%2e`` is a directory named so, not a way up."""
    from tesp_api.tes.jobplan import build_plan
    from tesp_api.tes.models import TesTask

    body = {**with_executor(stdout="/data/%2e%2e/%2e%2e/x"), "volumes": ["/data/%2E%2E"]}
    assert (await client.post(f"{BASE}/tasks", json=body)).status_code == 200
    plan = build_plan(TesTask.model_validate(body))
    assert [r.container for r in plan.roots(with_workdirs=True)] == ["/data/%2E%2E", "/data/%2e%2e/%2e%2e"]


async def test_a_nul_in_a_command_argument_is_400_not_silently_dropped(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    """bash drops NUL bytes when it reads a job script (``a\\0b`` ran as ``ab``); execve cannot pass one."""
    await refused(client, store, with_executor(command=["echo", "a\x00b"]), "executors[0].command")


@pytest.mark.parametrize("name", ["LD_PRELOAD=x", "A B", "1X", "", "X\n", "-e"])
async def test_bad_env_names_are_400(client: httpx.AsyncClient, store: SqliteTaskStore, name: str) -> None:
    await refused(client, store, with_executor(env={name: "v"}), "executors[0].env")


@pytest.mark.parametrize("value", ["a\nB=injected", "a\rb", "a\x00b"])
async def test_env_values_that_would_break_an_env_file_are_400(
    client: httpx.AsyncClient, store: SqliteTaskStore, value: str
) -> None:
    await refused(client, store, with_executor(env={"K": value}), "executors[0].env.K")


async def test_a_wildcard_output_in_a_system_directory_is_400(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    body = {**with_executor(), "outputs": [{"path": "/etc/*", "url": "http://h/o/"}]}
    await refused(client, store, body, "outputs[0].path")


async def test_every_problem_is_named_in_one_answer(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    body = {
        "executors": [{"image": "--privileged", "command": ["id"], "workdir": "rel", "env": {"A B": "x"}}],
        "volumes": ["/:/host"],
    }
    await refused(
        client, store, body, "executors[0].image", "executors[0].workdir", "executors[0].env", "volumes[0]"
    )


async def test_galaxy_workdir_slash_is_accepted(client: httpx.AsyncClient) -> None:
    """The issue's minimal reproduction of Pulsar's TES client: accepted (it used to die as SYSTEM_ERROR)."""
    body = {"executors": [{"image": "alpine", "command": ["pwd"], "workdir": "/"}]}
    assert (await client.post(f"{BASE}/tasks", json=body)).status_code == 200
