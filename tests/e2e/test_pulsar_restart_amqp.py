"""kill -9 of an AMQP Pulsar while jobs run, restarted after they ended: a finished job keeps its result.

What Pulsar 0.16 does (tesp_api/pulsar/amqp.py, ``_finished_unreported``): the jobs' processes live
on (their own process groups) and Pulsar's job script writes each one's ``return_code`` when it ends;
the restarted Pulsar cannot re-attach to a job that had started, publishes ``lost`` for it (listing
its job directory) and never uploads its outputs. A job whose message shows it finished (a return
code, the runner's ``tes-meta.tar``) has its setup sent once more: Pulsar launches it again, the
runner's guard exits 75 at once, and Pulsar uploads the first run's results. Before, such a task
ended PREEMPTED although its executor had run to completion. A job whose processes were killed too
still ends PREEMPTED (lost work). The REST twin: tests/e2e/test_pulsar_restart_rest.py.

Real parts: RabbitMQ, ``pulsar-main`` (SIGKILL to its process group, started again on the same
state directory), ``tesp-api serve`` as a child process, bubblewrap; executions are counted in a host
directory bound into every executor.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tesp_api.local import free_port
from tesp_api.pulsar.amqp import FINISHED_RESENT_REASON
from tests.e2e.test_crash_safety import FINAL, state_of
from tests.pulsar.test_amqp_restarts import serve
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


def counted_task(name: str, results: Path, seconds: float) -> dict[str, object]:
    """One executor that leaves a line per run in /markers/<name>, sleeps, and writes an output."""
    return {
        "name": name,
        "outputs": [{"path": "/data/out.txt", "url": f"file://{results}/{name}.out"}],
        "executors": [
            {
                "image": "alpine",
                "env": {"MARK": name},
                "command": [
                    "sh",
                    "-c",
                    f'echo run >> "/markers/$MARK"; sleep {seconds}; echo "done $MARK" | tee /data/out.txt',
                ],
            }
        ],
    }


def kill_9(pulsar: PulsarAmqp) -> None:
    """SIGKILL to Pulsar's process group, as a crash does (the jobs' own groups live on)."""
    assert pulsar.process is not None
    os.killpg(pulsar.process.pid, signal.SIGKILL)
    pulsar.process.wait(timeout=10)


async def test_a_job_that_finished_while_its_amqp_pulsar_was_down_keeps_its_result(tmp_path: Path) -> None:
    import httpx

    results = tmp_path / "results"
    results.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)  # executors run as runtime.sandbox_user
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("k"))
    server = serve(
        tmp_path / "serve",
        pulsar,
        results,
        free_port(),
        TESP_API_RUNTIME__EXTRA_ARGS=json.dumps(["--bind", str(markers), "/markers"]),
        TESP_API_PULSAR__AMQP_RECONCILE_AFTER="2",
    )
    names = ("finished", "killed")
    try:
        await pulsar.start()
        server.start()
        api = server.url + "/ga4gh/tes/v1"
        ids = {
            name: str(
                httpx.post(f"{api}/tasks", json=counted_task(name, results, 4), timeout=10).json()["id"]
            )
            for name in names
        }
        deadline = time.monotonic() + 90
        while not all((markers / name).exists() for name in names):
            assert time.monotonic() < deadline, "the tasks never started"
            await asyncio.sleep(0.1)
        kill_9(pulsar)
        await pulsar.stop(kill_jobs=False)  # reaped; its job processes live on
        job_dir = {name: pulsar.staging_directory / ids[name] for name in names}
        # The victim's processes die too (a host crash, an OOM kill of the job): no return code.
        os.killpg(int(json.loads((job_dir["killed"] / "pid").read_text())), signal.SIGKILL)
        while not (job_dir["finished"] / "return_code").exists():  # it ends while Pulsar is down
            assert time.monotonic() < deadline, "the job never finished"
            await asyncio.sleep(0.1)
        await pulsar.start()
        while True:
            tasks = {name: state_of(server.url, ids[name]) for name in names}
            if all(t["state"] in FINAL for t in tasks.values()):
                break
            assert time.monotonic() < deadline + 60, {n: t["state"] for n, t in tasks.items()}
            await asyncio.sleep(0.3)
    finally:
        server.stop()
        await pulsar.stop()
        await pulsar.delete_queues()
    finished = tasks["finished"]
    assert finished["state"] == "COMPLETE", finished
    log = finished["logs"][0]  # type: ignore[index]
    assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, "done finished\n")]
    assert FINISHED_RESENT_REASON in log["system_logs"]
    assert (results / "finished.out").read_text() == "done finished\n"
    assert (markers / "finished").read_text() == "run\n", "the finished job ran again"
    lost = tasks["killed"]
    assert lost["state"] == "PREEMPTED", lost
    assert (markers / "killed").read_text() == "run\n"
