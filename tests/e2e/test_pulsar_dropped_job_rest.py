"""A job a killed Pulsar had taken off its queue but not started (REST): submitted again, it runs once.

The crash window (pulsar-app 0.16, ``queued_python``, pulsar/managers/queued.py ``run_next``): a worker
thread takes the job off Pulsar's in-memory queue, deletes its ``command_line`` file and only then
starts its process. Pulsar killed -9 in between: the restarted Pulsar cannot recover the job (no
``command_line``), takes it off its active list and answers ``queued`` for it for ever, never running
it. Before the fix the task stayed INITIALIZING for ever when no later-submitted job overtook it.

The window is a few instructions wide, so the test holds it open: Pulsar first runs with no worker
thread (``num_concurrent_jobs: 0``: jobs are queued, ``command_line`` written, and never taken off the
queue); once the task's job waits there, Pulsar is killed -9 (its whole process group), the job's
``command_line`` deleted (what ``run_next`` does just before starting it), and Pulsar started again on
the same state directory with one worker thread. What must follow: the service submits the job once
more after ``pulsar.lost_job_deadline`` (said in system_logs), it runs (its executor once) and the task
ends COMPLETE.

(A slot held by a first long job cannot keep the second one waiting: ``run_next`` asks ``_run`` for a
foreground monitor as ``montior=``, a keyword ``_start_monitor`` never reads, so every job is watched in
a thread of its own and ``num_concurrent_jobs`` limits only how many are being started at once.)

Real parts: pulsar-serve, `tesp-api serve` as a child process, bubblewrap; executions are counted in a
host directory bound into every executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_crash_safety import FINAL, counting_task, state_of
from tests.e2e.test_pulsar_restart_rest import LOST_JOB_DEADLINE, kill_9, serve_counting_runs
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]


@pytest.fixture
def pulsar(tmp_path: Path) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path / "pulsar", num_concurrent_jobs=0) as server:  # queues, never starts
        yield server


def wait_for(what: str, done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_job_pulsar_dropped_from_its_queue_when_killed_is_submitted_again_and_runs_once(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    serve, markers = serve_counting_runs(tmp_path, pulsar)
    serve.start()
    try:
        api = serve.url + "/ga4gh/tes/v1"
        task_id = str(httpx.post(f"{api}/tasks", json=counting_task("dropped", 1), timeout=10).json()["id"])
        command_line = pulsar.staging_directory / task_id / "command_line"
        wait_for("the job never reached Pulsar's queue", command_line.exists, 120)

        kill_9(pulsar)
        command_line.unlink()  # what run_next does just before starting the job
        pulsar.num_concurrent_jobs = 1  # the restarted Pulsar starts what it has queued
        pulsar.start()

        deadline = time.monotonic() + 3 * LOST_JOB_DEADLINE + 90
        while (task := state_of(serve.url, task_id))["state"] not in FINAL:
            assert time.monotonic() < deadline, task["state"]
            time.sleep(0.5)
    finally:
        serve.stop()

    assert task["state"] == "COMPLETE", task
    log = task["logs"][0]  # type: ignore[index]
    assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, "done dropped\n")]
    assert (markers / "dropped").read_text() == "run\n", "the executor ran more than once"
    assert any("submitted to Pulsar once more" in line for line in log["system_logs"]), log["system_logs"]
