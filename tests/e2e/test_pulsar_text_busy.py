"""Pulsar's fork/exec race ("command.sh: Text file busy", exit 126), made certain, and our launcher immune to it.

The race (tesp_api/pulsar/serve.py): Pulsar writes a job's command.sh and its shell execs it; a
process that still holds the file open for writing at that instant (a child another Pulsar thread
forked meanwhile) makes the exec fail with ETXTBSY. Here the test itself holds the job's command.sh
open for writing across the submit (Pulsar rewrites the same inode, "wb"), so every launch meets the
race: Pulsar's own pulsar-serve fails the job, ``python -m tesp_api.pulsar.serve`` (what
LocalPulsar runs) reads the script through its interpreter and runs it.

Real parts: pulsar-serve on 127.0.0.1, its REST API (setup, upload, submit, status).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tesp_api.pulsar.serve import JOB_SCRIPT
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar]
DEADLINE = 120.0  # a bound on the wait, not a timed assertion


def run_with_script_held_open(pulsar: LocalPulsar, job_id: str) -> dict[str, Any]:
    """One job (``echo ran``), its command.sh held open for writing by this process from before
    Pulsar writes it until the job is final; Pulsar's final status."""
    with pulsar.client(timeout=30.0) as client:
        assert client.post("/jobs", params={"job_id": job_id}).status_code == 200
        tool = client.post(
            f"/jobs/{job_id}/files", params={"name": "job.sh", "type": "tool"}, content=b"echo ran\n"
        ).json()["path"]
        with open(pulsar.staging_directory / job_id / JOB_SCRIPT, "wb"):
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
    with pulsar_server(tmp_path / "pulsar", exec_job_scripts=True) as pulsar:
        status = run_with_script_held_open(pulsar, "busy")
    assert "Text file busy" in f"{status.get('stderr')}{status.get('job_stderr')}"
    assert int(status["returncode"]) == 126


def test_our_pulsar_launcher_runs_a_job_whose_script_is_held_open_for_writing(tmp_path: Path) -> None:
    with pulsar_server(tmp_path / "pulsar") as pulsar:
        status = run_with_script_held_open(pulsar, "busy")
    assert "Text file busy" not in f"{status.get('stderr')}{status.get('job_stderr')}"
    assert int(status["returncode"]) == 0
    assert "ran" in f"{status.get('stdout')}{status.get('job_stdout')}"
