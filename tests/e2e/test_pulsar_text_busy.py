"""Pulsar's fork/exec race ("command.sh: Text file busy", exit 126), made certain, and our launcher immune to it.

The race (tesp_api/pulsar/serve.py): Pulsar writes a job's command.sh and its shell execs it; a
process that still holds the file open for writing at that instant (a child another Pulsar thread
forked meanwhile) makes the exec fail with ETXTBSY. Here the test itself holds the job's command.sh
open for writing across the submit (Pulsar rewrites the same inode, "wb"), so every launch meets the
race: Pulsar's own pulsar-serve fails the job, ``python -m tesp_api.pulsar.serve`` (what
LocalPulsar runs) reads the script through its interpreter and runs it.

Through tesp-api (any Pulsar, tesp_api/engine/exec_race.py): the job that failed so is submitted
again as ``<task id>-r1`` and the task ends COMPLETE, its executor run once. The task's job
directory is made certain to meet the race the same way: with ``engine.max_running_tasks = 1`` and
a first task holding the one slot, the second task waits QUEUED, its id known, while the test
creates and holds open ``<staging>/<its id>/command.sh`` (Pulsar's setup accepts an existing job
directory); then the first task is let go.

Real parts: pulsar-serve on 127.0.0.1, its REST API (setup, upload, submit, status); `tesp-api
serve` as a child process, bubblewrap, executions counted in a host directory bound into every
executor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesp_api.pulsar.serve import JOB_SCRIPT
from tests.e2e.test_crash_safety import FINAL, counting_task, state_of
from tests.e2e.test_pulsar_dropped_job_rest import wait_for
from tests.e2e.test_pulsar_restart_rest import serve_counting_runs
from tests.services.pulsar import pulsar_server

pytestmark = [pytest.mark.pulsar]
DEADLINE = 120.0  # a bound on the wait, not a timed assertion


def run_with_script_held_open(client: httpx.Client, staging: Path, job_id: str) -> dict[str, Any]:
    """One job (``echo ran``) on the Pulsar ``client`` talks to (REST), its command.sh under
    ``staging`` held open for writing by this process from before Pulsar writes it until the job
    is final; Pulsar's final status."""
    assert client.post("/jobs", params={"job_id": job_id}).status_code == 200
    tool = client.post(
        f"/jobs/{job_id}/files", params={"name": "job.sh", "type": "tool"}, content=b"echo ran\n"
    ).json()["path"]
    with open(staging / job_id / JOB_SCRIPT, "wb"):
        client.post(f"/jobs/{job_id}/submit", params={"command_line": f"bash {tool}"})
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            status: dict[str, Any] = client.get(f"/jobs/{job_id}/status").json()
            if status["status"] in ("complete", "failed", "lost", "cancelled"):
                return status
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final within {DEADLINE} s")


def test_plain_pulsar_serve_fails_a_job_whose_script_is_held_open_for_writing(tmp_path: Path) -> None:
    """The race reproduced: what every task hit about once in 300 before our launcher."""
    with (
        pulsar_server(tmp_path / "pulsar", exec_job_scripts=True) as pulsar,
        pulsar.client(timeout=30.0) as client,
    ):
        status = run_with_script_held_open(client, pulsar.staging_directory, "busy")
    assert "Text file busy" in f"{status.get('stderr')}{status.get('job_stderr')}"
    assert int(status["returncode"]) == 126


def test_our_pulsar_launcher_runs_a_job_whose_script_is_held_open_for_writing(tmp_path: Path) -> None:
    with pulsar_server(tmp_path / "pulsar") as pulsar, pulsar.client(timeout=30.0) as client:
        status = run_with_script_held_open(client, pulsar.staging_directory, "busy")
    assert "Text file busy" not in f"{status.get('stderr')}{status.get('job_stderr')}"
    assert int(status["returncode"]) == 0
    assert "ran" in f"{status.get('stdout')}{status.get('job_stdout')}"


def test_a_task_whose_job_script_was_text_busy_on_plain_pulsar_serve_is_run_again_and_completes(
    tmp_path: Path,
) -> None:
    with pulsar_server(tmp_path / "pulsar", exec_job_scripts=True) as pulsar:
        serve, markers = serve_counting_runs(tmp_path, pulsar)
        serve.env["TESP_API_ENGINE__MAX_RUNNING_TASKS"] = "1"
        serve.start()
        try:
            api = serve.url + "/ga4gh/tes/v1"
            gate = {
                "name": "gate",
                "executors": [
                    {
                        "image": "alpine",
                        "command": ["sh", "-c", "while [ ! -e /markers/go ]; do sleep 0.1; done"],
                    }
                ],
            }
            gate_id = str(httpx.post(f"{api}/tasks", json=gate, timeout=10).json()["id"])
            wait_for(
                "the gate task never ran", lambda: state_of(serve.url, gate_id)["state"] == "RUNNING", 120
            )
            task_id = str(httpx.post(f"{api}/tasks", json=counting_task("busy", 0), timeout=10).json()["id"])
            assert state_of(serve.url, task_id)["state"] == "QUEUED"  # the one slot is the gate's
            job_dir = pulsar.staging_directory / task_id
            job_dir.mkdir()
            held = os.open(job_dir / JOB_SCRIPT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                (markers / "go").touch()
                deadline = time.monotonic() + DEADLINE
                while (task := state_of(serve.url, task_id))["state"] not in FINAL:
                    assert time.monotonic() < deadline, task["state"]
                    time.sleep(0.2)
            finally:
                os.close(held)
        finally:
            serve.stop()
    assert task["state"] == "COMPLETE", task
    log = task["logs"][0]  # type: ignore[index]
    assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, "done busy\n")]
    assert (markers / "busy").read_text() == "run\n", "the executor ran more than once"
    reruns = [line for line in log["system_logs"] if "Text file busy" in line]
    assert len(reruns) == 1 and f"Pulsar job {task_id}-r1" in reruns[0], log["system_logs"]
