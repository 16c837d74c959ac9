"""kill -9 of `tesp-api serve` (engine inside) while tasks are queued, initializing and running;
a new server on the same store finishes every task, once, with complete logs.

Real parts: the server is a child process killed with SIGKILL, Pulsar (REST) runs on, the store
is the embedded SQLite file. bubblewrap stands in for the container runtime (no Docker engine
here); an extra bind mount gives every executor a host directory in which each run appends to a
per-task marker file, so executions are counted on the host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine.serve_process import ServeProcess
from tests.engine.slow_http import SlowInputServer
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-crash"), num_concurrent_jobs=8) as server:
        yield server


def counting_task(name: str, seconds: float, inputs: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {
        "name": name,
        "inputs": inputs or [],
        "executors": [
            {
                "image": "alpine",
                "env": {"MARK": name},
                "command": ["sh", "-c", f'echo run >> "/markers/$MARK"; sleep {seconds}; echo "done $MARK"'],
            }
        ],
    }


def state_of(api: str, task_id: str) -> dict[str, object]:
    return dict(httpx.get(f"{api}/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json())


def test_tasks_survive_a_kill_9_of_the_server_and_run_once(pulsar: LocalPulsar, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)  # bound into the sandbox, whose executors run as runtime.sandbox_user (not root)
    env = {
        "TESP_API_ENGINE__LEASE_SECONDS": "2",
        "TESP_API_ENGINE__MAX_RUNNING_TASKS": "3",  # the rest stays QUEUED
        "TESP_API_RUNTIME__EXTRA_ARGS": json.dumps(["--bind", str(markers), "/markers"]),
    }
    with SlowInputServer() as slow:
        first = ServeProcess(tmp_path, pulsar.url, **env)
        first.start()
        try:
            api = first.url + "/ga4gh/tes/v1"

            def create(task: dict[str, object]) -> str:
                return str(httpx.post(f"{api}/tasks", json=task, timeout=10).json()["id"])

            running = [create(counting_task(f"running-{i}", 3)) for i in range(2)]
            deadline = time.monotonic() + 30
            while not all((markers / f"running-{i}").exists() for i in range(2)):
                assert time.monotonic() < deadline, "the running tasks never started"
                time.sleep(0.05)
            initializing = create(counting_task("initializing", 0, [{"path": "/in/x", "url": slow.url}]))
            assert slow.requested.wait(30), "the initializing task never fetched its input"
            queued = [create(counting_task(f"queued-{i}", 0)) for i in range(3)]
            states = {t: state_of(first.url, t)["state"] for t in [*running, initializing, *queued]}
            assert [states[t] for t in running] == ["RUNNING", "RUNNING"]
            assert states[initializing] == "INITIALIZING"
            assert {states[t] for t in queued} == {"QUEUED"}
        finally:
            first.kill()
        slow.release.set()

        second = ServeProcess(tmp_path, pulsar.url, **env)
        second.start()
        try:
            all_ids = [*running, initializing, *queued]
            deadline = time.monotonic() + 90
            while True:
                tasks = {t: state_of(second.url, t) for t in all_ids}
                if all(t["state"] in FINAL for t in tasks.values()):
                    break
                assert time.monotonic() < deadline, {t: v["state"] for t, v in tasks.items()}
                time.sleep(0.2)
        finally:
            second.stop()

    for task_id, task in tasks.items():
        name = str(task["name"])
        assert task["state"] == "COMPLETE", (name, task)
        log = task["logs"][0]  # type: ignore[index]
        assert log["start_time"] and log["end_time"]
        assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, f"done {name}\n")]
        assert (markers / name).read_text() == "run\n", f"{name} ran more than once"
        assert not (pulsar.staging_directory / task_id).exists()
