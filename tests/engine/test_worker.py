"""`tesp-api worker`: the engine as its own process, the API (`serve` with the engine disabled) in
another, one SQLite store between them; a task created through the API runs, and a cancel made by
the API process reaches the worker through the store. bwrap stands in for a container runtime (no
Docker engine on these machines)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine.serve_process import ServeProcess
from tests.engine.test_engine import processes_with
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-worker")) as server:
        yield server


def wait_state(api: str, task_id: str, wanted: set[str], timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        task = httpx.get(f"{api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json()
        if task["state"] in wanted:
            return dict(task)
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def test_a_separate_worker_runs_tasks_and_sees_cancels(pulsar: LocalPulsar, tmp_path: Path) -> None:
    api_server = ServeProcess(tmp_path, pulsar.url, TESP_API_ENGINE__ENABLED="false")
    api_server.start()
    env = {**api_server.env, "TESP_API_ENGINE__ENABLED": "true"}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tesp_api", "worker"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = api_server.url + "/ga4gh/tes/v1"
    try:
        ok = httpx.post(
            f"{api}/tasks", json={"executors": [{"image": "a", "command": ["echo", "w"]}]}
        ).json()["id"]
        assert wait_state(api, ok, {"COMPLETE"})["logs"][0]["logs"][0]["stdout"] == "w\n"  # type: ignore[index]
        marker = f"297.{random.randint(10**8, 10**9)}"
        slow = httpx.post(
            f"{api}/tasks", json={"executors": [{"image": "a", "command": ["sleep", marker]}]}
        ).json()["id"]
        wait_state(api, slow, {"RUNNING"})
        deadline = time.monotonic() + 30
        while not processes_with(marker):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        httpx.post(f"{api}/tasks/{slow}:cancel", timeout=10)
        while processes_with(marker) or (pulsar.staging_directory / slow).exists():
            assert time.monotonic() < deadline + 30, "the worker did not act on the cancel"
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        api_server.stop()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
