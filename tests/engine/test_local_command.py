"""`tesp-api local`: one command starts Pulsar, the API, the engine and the embedded store; a
task runs; SIGTERM stops everything, the Pulsar child included. No Docker engine here, so the
automatic runtime choice falls back to bubblewrap (with its loud warning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tesp_api.local import free_port
from tests.engine.test_engine import processes_with
from tests.services.die_with_parent import die_with_parent

pytestmark = [pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(600)]


def test_local_runs_a_task_and_stops_its_pulsar(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "CONTAINER_TYPE"}
    env["TESP_API_SETTINGS"] = str(tmp_path / "settings.toml")  # absent: defaults
    env["CONTAINER_TYPE"] = "bwrap"  # podman or docker may work here, but with no image to run
    log_file = tmp_path / "local.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tesp_api",
                "local",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # noqa: PLW1509 - one C call, see die_with_parent.py
    api = f"http://127.0.0.1:{port}/ga4gh/tes/v1"
    try:
        deadline = time.monotonic() + 240  # generous: a loaded machine starts slowly
        while True:
            assert proc.poll() is None, log_file.read_text()
            try:
                if httpx.get(f"{api}/service-info", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.2)
        task_id = httpx.post(
            f"{api}/tasks", json={"executors": [{"image": "alpine", "command": ["echo", "hi"]}]}, timeout=10
        ).json()["id"]
        while (task := httpx.get(f"{api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json())[
            "state"
        ] in ("QUEUED", "INITIALIZING", "RUNNING"):
            assert time.monotonic() < deadline + 120
            time.sleep(0.1)
        assert task["state"] == "COMPLETE"
        assert task["logs"][0]["logs"][0]["stdout"] == "hi\n"
        assert processes_with(str(tmp_path / "state" / "pulsar"))  # Pulsar runs as a child
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    assert processes_with(str(tmp_path / "state" / "pulsar")) == []
