"""kill -9 of Pulsar (REST mode) while jobs run, restarted 3 s later: every task still ends, right.

What Pulsar 0.16 does (tesp_api/pulsar/liveness.py): the jobs' processes live on (their own process
groups), but the restarted Pulsar cannot recover a job that had started and answers ``running`` for
ever. The runner's heartbeat tells the service what happened: a job whose runner finished ends with
its real result (COMPLETE, its executor run once), a job whose processes were killed too ends
PREEMPTED with a system log line saying so, both within ``pulsar.lost_job_deadline`` of the end.

Real parts: pulsar-serve (killed with SIGKILL to its process group and started again on the same
state directory and port), `tesp-api serve` as a child process, bubblewrap; executions are counted
in a host directory bound into every executor.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_crash_safety import FINAL, counting_task, state_of
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
LOST_JOB_DEADLINE = 15  # the runner beats every 5 s


@pytest.fixture
def pulsar(tmp_path: Path) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path / "pulsar", num_concurrent_jobs=8) as server:
        yield server


def kill_9(pulsar: LocalPulsar) -> None:
    """SIGKILL to Pulsar's whole process group (gunicorn and its workers), as a crash does."""
    assert pulsar.process is not None
    os.killpg(pulsar.process.pid, signal.SIGKILL)
    pulsar.process.wait(timeout=10)
    pulsar.process = None


def job_process_group(pulsar: LocalPulsar, job_id: str) -> int:
    return int(json.loads((pulsar.staging_directory / job_id / "pid").read_text()))


def serve_counting_runs(tmp_path: Path, pulsar: LocalPulsar) -> tuple[ServeProcess, Path]:
    """`tesp-api serve` on ``pulsar`` with a short lost_job_deadline, every executor seeing the host
    directory (returned) where counting_task's executors leave one line per run."""
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)  # executors run as runtime.sandbox_user
    serve = ServeProcess(
        tmp_path,
        pulsar.url,
        TESP_API_PULSAR__LOST_JOB_DEADLINE=str(LOST_JOB_DEADLINE),
        TESP_API_RUNTIME__EXTRA_ARGS=json.dumps(["--bind", str(markers), "/markers"]),
    )
    return serve, markers


def test_a_pulsar_killed_and_restarted_under_running_jobs_loses_none(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    serve, markers = serve_counting_runs(tmp_path, pulsar)
    serve.start()
    try:
        api = serve.url + "/ga4gh/tes/v1"
        names = [f"sleeper-{i}" for i in range(4)]
        ids = {
            name: str(httpx.post(f"{api}/tasks", json=counting_task(name, 12), timeout=10).json()["id"])
            for name in names
        }
        deadline = time.monotonic() + 60
        while not all((markers / name).exists() for name in names):
            assert time.monotonic() < deadline, "the tasks never started"
            time.sleep(0.1)

        kill_9(pulsar)
        victim = names[0]  # its processes die too: a host crash, an OOM kill of the job
        os.killpg(job_process_group(pulsar, ids[victim]), signal.SIGKILL)
        time.sleep(3)
        pulsar.start()

        deadline = time.monotonic() + 12 + LOST_JOB_DEADLINE + 90
        while True:
            tasks = {name: state_of(serve.url, ids[name]) for name in names}
            if all(t["state"] in FINAL for t in tasks.values()):
                break
            assert time.monotonic() < deadline, {n: t["state"] for n, t in tasks.items()}
            time.sleep(0.5)
    finally:
        serve.stop()

    for name in names[1:]:
        task = tasks[name]
        assert task["state"] == "COMPLETE", (name, task)
        log = task["logs"][0]  # type: ignore[index]
        assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, f"done {name}\n")]
        assert (markers / name).read_text() == "run\n", f"{name} ran more than once"
    lost = tasks[victim]
    assert lost["state"] == "PREEMPTED", lost
    assert any("were killed" in line for line in lost["logs"][0]["system_logs"]), lost  # type: ignore[index]
    assert (markers / victim).read_text() == "run\n"
