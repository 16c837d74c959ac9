"""`tesp-api serve` as a real process on 127.0.0.1, spoken to with plain HTTP like curl would.

The engine is disabled (TESP_API_ENGINE__ENABLED=false): this checks the installed command, the
settings loading from the environment, the SQLite store on disk and the HTTP surface together;
running tasks is covered by the engine's own end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.services.tesp_process import TespProcess

STARTUP_DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a `tesp-api serve` child process; stopped by its PID at the end."""
    workdir = tmp_path_factory.mktemp("serve")
    serve = TespProcess(
        workdir,
        workdir / "serve.log",
        {
            "TESP_API_ENGINE__ENABLED": "false",
            "TESP_API_DB__SQLITE_PATH": str(workdir / "tasks.sqlite3"),
            "TESP_API_SETTINGS": str(workdir / "settings.toml"),  # absent: defaults + environment only
        },
    )
    serve.start(STARTUP_DEADLINE_SECONDS)
    try:
        yield serve.url
    finally:
        serve.stop()


TASK = {
    "name": "e2e",
    "executors": [{"image": "alpine", "command": ["echo", "hello"]}],
    "tags": {"suite": "e2e"},
}


def test_create_get_list_and_cancel_over_http(server: str) -> None:
    api = f"{server}/ga4gh/tes/v1"
    created = httpx.post(f"{api}/tasks", json=TASK)
    assert created.status_code == 200
    task_id = created.json()["id"]

    assert httpx.get(f"{api}/tasks/{task_id}").json() == {"id": task_id, "state": "QUEUED"}
    listed = httpx.get(f"{api}/tasks", params={"tag_key": "suite", "view": "BASIC"}).json()
    assert [t["id"] for t in listed["tasks"]] == [task_id]
    assert listed["tasks"][0]["name"] == "e2e"

    assert httpx.post(f"{api}/tasks/{task_id}:cancel").json() == {}
    assert httpx.get(f"{server}/v1/tasks/{task_id}").json()["state"] == "CANCELED"


def test_bad_request_over_http_is_a_tes_error(server: str) -> None:
    response = httpx.post(f"{server}/ga4gh/tes/v1/tasks", json={"executors": []})
    assert response.status_code == 400
    assert response.json()["status_code"] == 400


def test_service_info_over_http(server: str) -> None:
    info = httpx.get(f"{server}/service-info").json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}


def test_unknown_task_over_http_is_404(server: str) -> None:
    assert httpx.get(f"{server}/v1/tasks/does-not-exist").status_code == 404
