"""End to end in AMQP mode: a real `tesp-api serve` process (API + engine + embedded store) configured only
by TESP_API_* variables for Pulsar over AMQP, a real ``pulsar-main`` and the real RabbitMQ broker, spoken
to with the py-tes 1.1.4 client. No container engine here: Pulsar and the broker are plain processes and
bubblewrap stands in for the container runtime (images are ignored).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tes

from tesp_api.local import free_port
from tests.engine.serve_process import ServeProcess
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp, running_pulsar_amqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(150)]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "s") as server:
        yield server


def serve_over_amqp(workdir: Path, pulsar: PulsarAmqp, results: Path, staging_port: int) -> ServeProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return ServeProcess(
        workdir,
        "",  # no REST url: AMQP mode
        TESP_API_PULSAR__AMQP_URL=pulsar.amqp_url,
        TESP_API_PULSAR__AMQP_KEY_PREFIX=pulsar.key_prefix,
        # A fixed staging address, as a deployment has: Pulsar's uploads reach a restarted service too.
        TESP_API_PULSAR__STAGING_LISTEN=f"127.0.0.1:{staging_port}",
        TESP_API_ENGINE__LEASE_SECONDS="3",
        TESP_API_TRANSFER__ALLOWED_DIRS=f'["{results}"]',
    )


def wait_final(client: tes.HTTPClient, task_id: str, timeout: float = 90) -> tes.Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.get_task(task_id, view="FULL")
        if got.state in FINAL:
            return got
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not final after {timeout}s")


def wait_state(client: tes.HTTPClient, task_id: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get_task(task_id).state != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} never {state}")
        time.sleep(0.1)


async def test_task_through_the_api_completes_over_amqp(pulsar: PulsarAmqp, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    server = serve_over_amqp(tmp_path / "serve", pulsar, results, free_port())
    server.start()
    try:
        client = tes.HTTPClient(server.url, timeout=10)
        task_id = client.create_task(
            tes.Task(
                inputs=[tes.Input(path="/data/in.txt", content="b\na\n")],
                outputs=[tes.Output(path="/data/sorted.txt", url=f"file://{results}/sorted.txt")],
                executors=[
                    tes.Executor(image="alpine", command=["sort", "/data/in.txt"], stdout="/data/sorted.txt")
                ],
            )
        )
        done = wait_final(client, task_id)
    finally:
        server.stop()
    assert done.state == "COMPLETE", done.logs[0].system_logs
    assert (results / "sorted.txt").read_text() == "a\nb\n"


async def test_task_running_while_serve_is_killed_completes_after_restart(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    staging_port = free_port()
    first = serve_over_amqp(tmp_path / "serve", pulsar, results, staging_port)
    first.start()
    try:
        client = tes.HTTPClient(first.url, timeout=10)
        task_id = client.create_task(
            tes.Task(
                outputs=[tes.Output(path="/data/out.txt", url=f"file://{results}/out.txt")],
                executors=[
                    tes.Executor(image="a", command=["sh", "-c", "sleep 4; echo once > /data/out.txt"])
                ],
            )
        )
        wait_state(client, task_id, "RUNNING")
        first.kill()  # kill -9 while Pulsar runs the job
    finally:
        first.stop()
    second = serve_over_amqp(tmp_path / "serve", pulsar, results, staging_port)
    second.start()
    try:
        done = wait_final(tes.HTTPClient(second.url, timeout=10), task_id)
    finally:
        second.stop()
    assert done.state == "COMPLETE", done.logs[0].system_logs
    assert (results / "out.txt").read_text() == "once\n"
