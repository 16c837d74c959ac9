"""With api.workers = 1 the API runs in a process without an engine (tesp_api/workers.py), yet
GET /admin/servers (health and load), the dashboard's Pulsar list and a waiting task's FULL view
show the Pulsar server as the engine sees it: the engine process publishes it through the store (tesp_api/store/snapshots.py)
and the API process reads it. Before, that process answered `up: null` / "unknown" for ever.
Real `tesp-api serve` child processes, a real Pulsar (REST) stopped mid-test, the embedded SQLite
store shared by both children."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
HEALTH = {
    "TESP_API_API__WORKERS": "1",
    "TESP_API_PULSAR__HEALTH__PROBE_INTERVAL": "0.5",
    "TESP_API_PULSAR__HEALTH__PROBE_TIMEOUT": "1",
}


@pytest.fixture
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-health")) as server:
        yield server


def until(read: Callable[[], Any], done: Callable[[Any], bool], seconds: float = 60.0) -> Any:
    """The first answer of ``read`` for which ``done`` holds (a bound on waiting, not a timing test)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = read()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


def test_an_api_process_shows_the_health_the_engine_process_publishes(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path, pulsar.url, **HEALTH)
    server.start()
    assert server.process is not None
    try:
        assert len(psutil.Process(server.process.pid).children()) == 2  # one API process, the engine
        with httpx.Client(base_url=server.url, timeout=10) as client:

            def admin() -> dict[str, Any]:
                answer: dict[str, Any] = client.get("/admin/servers").json()["servers"][0]
                return answer

            def dashboard() -> dict[str, Any]:
                answer: dict[str, Any] = client.get("/dashboard/api/pulsar").json()[0]
                return answer

            up = until(admin, lambda s: s["up"] is True)
            assert up["health_from"] is not None and up["last_probe"] is not None
            assert until(dashboard, lambda s: s["health"] != "unknown")["health"] == "ok"
            info = client.get("/ga4gh/tes/v1/service-info").json()  # settings only: the same anywhere
            assert info["type"]["artifact"] == "tes"

            # The load is the store's count of tasks holding a slot, whichever process asks.
            running = client.post(
                "/ga4gh/tes/v1/tasks", json={"executors": [{"image": "alpine", "command": ["sleep", "600"]}]}
            ).json()["id"]
            until(
                lambda: client.get(f"/ga4gh/tes/v1/tasks/{running}").json()["state"], lambda s: s == "RUNNING"
            )
            assert admin()["active"] == 1
            assert client.post(f"/ga4gh/tes/v1/tasks/{running}:cancel").json() == {}
            until(admin, lambda s: s["active"] == 0)

            pulsar.stop(timeout=3.0)
            down = until(admin, lambda s: s["up"] is False)
            assert down["consecutive_failures"] >= 2 and down["last_error"]
            assert until(dashboard, lambda s: s["health"] == "error")["last_contact"] is not None

            task_id = client.post(
                "/ga4gh/tes/v1/tasks", json={"executors": [{"image": "alpine", "command": ["true"]}]}
            ).json()["id"]
            task = client.get(f"/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}).json()
        assert task["state"] == "QUEUED"  # no server is up: the engine claims nothing
        assert "waiting for a Pulsar server: default: down" in task["logs"][0]["system_logs"]
    finally:
        server.stop()
    assert "Traceback" not in server.log_file.read_text()
