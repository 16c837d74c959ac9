"""The AMQP client against a real Pulsar (``pulsar-main`` in AMQP mode, a plain child process: there is
no container engine here) and the real RabbitMQ broker on 127.0.0.1:5672. Every test uses its own queue
prefix, so the shared broker keeps tests and other users apart; queues are deleted afterwards.
Remote staging goes through a real uvicorn server (inputs served by GET, outputs received by POST).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tesp_api.pulsar.amqp_client import AmqpClientOptions, AmqpPulsarClient
from tesp_api.pulsar.amqp_messages import (
    JOB_DIRECTORY_TOKEN,
    CollectedOutput,
    RemoteStaging,
    SetupMessage,
    StagedFile,
)
from tesp_api.pulsar.amqp_names import PulsarQueues
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp, StagingHttpServer, UpdateRecorder, running_pulsar_amqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.timeout(120)]

FINAL = {"complete", "cancelled", "failed", "lost"}


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "p") as server:
        yield server


@pytest.fixture
async def staging(tmp_path: Path) -> AsyncIterator[StagingHttpServer]:
    server = StagingHttpServer(tmp_path / "http")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def new_client(pulsar: PulsarAmqp, recorder: UpdateRecorder, **options: float) -> AmqpPulsarClient:
    return AmqpPulsarClient(
        pulsar.amqp_url,
        PulsarQueues.for_manager(amqp_key_prefix=pulsar.key_prefix),
        recorder,
        AmqpClientOptions(**options),  # type: ignore[arg-type]
    )


def sleep_job(job_id: str, seconds: float) -> SetupMessage:
    return SetupMessage(job_id=job_id, command_line=f"sleep {seconds}")


async def test_job_with_remote_staging_reports_completion_by_push(
    pulsar: PulsarAmqp, staging: StagingHttpServer
) -> None:
    (staging.input_dir / "in.txt").write_text("hello from tesp\n")
    job_id = str(uuid.uuid4())
    script = "tr a-z A-Z < ../inputs/in.txt > result.txt\nmkdir -p d && echo x > d/one && echo y > d/two\n"
    setup = SetupMessage(
        job_id=job_id,
        command_line=f"sh {JOB_DIRECTORY_TOKEN}/configs/job.sh",
        remote_staging=RemoteStaging(
            files=[
                StagedFile("in.txt", url=staging.input_url("in.txt")),
                StagedFile("job.sh", contents=script, type="config"),
            ],
            outputs=[CollectedOutput("0", "result.txt"), CollectedOutput("1", "d")],
            files_endpoint=staging.files_endpoint,
        ),
    )
    recorder = UpdateRecorder()
    async with new_client(pulsar, recorder) as client:
        await client.submit(setup)
        final = await recorder.wait_for(job_id, FINAL)
    assert final.status == "complete" and final.returncode == 0  # type: ignore[attr-defined]
    assert (staging.output_dir / "0").read_text() == "HELLO FROM TESP\n"
    assert (staging.output_dir / "1" / "one").read_text() == "x\n"
    assert (staging.output_dir / "1" / "two").read_text() == "y\n"


async def test_updates_arrive_without_any_status_request(pulsar: PulsarAmqp) -> None:
    job_id = str(uuid.uuid4())
    recorder = UpdateRecorder()
    async with new_client(pulsar, recorder, reconcile_after=3600) as client:
        await client.submit(sleep_job(job_id, 1))
        await recorder.wait_for(job_id, FINAL)
        assert client.stats.published["status"] == 0
    assert recorder.statuses(job_id)[-1] == "complete"


async def test_kill_of_running_job_gets_final_state_by_status_request(pulsar: PulsarAmqp) -> None:
    job_id = str(uuid.uuid4())
    recorder = UpdateRecorder()
    async with new_client(pulsar, recorder) as client:
        await client.submit(sleep_job(job_id, 60))
        await recorder.wait_for(job_id, {"running"})
        await client.kill(job_id)
        final = await recorder.wait_for(job_id, FINAL)
    # Pulsar may or may not publish after a kill; the client's status requests make sure it is heard.
    assert final.status == "cancelled"  # type: ignore[attr-defined]


async def test_job_running_across_a_pulsar_restart_still_gets_a_final_state(pulsar: PulsarAmqp) -> None:
    job_id = str(uuid.uuid4())
    recorder = UpdateRecorder()
    async with new_client(pulsar, recorder, reconcile_after=2) as client:
        await client.submit(sleep_job(job_id, 3))
        await recorder.wait_for(job_id, {"running"})
        await pulsar.restart()
        final = await recorder.wait_for(job_id, FINAL)
    # queued_python cannot re-attach to a job it had started: Pulsar reports it "lost" (the engine
    # turns that into SYSTEM_ERROR); what matters here is that the final state reaches us.
    assert final.status in FINAL  # type: ignore[attr-defined]


async def test_job_running_across_a_broker_restart_reports_completion(pulsar: PulsarAmqp) -> None:
    job_id = str(uuid.uuid4())
    recorder = UpdateRecorder()
    async with new_client(pulsar, recorder, reconcile_after=5) as client:
        await client.submit(sleep_job(job_id, 4))
        await recorder.wait_for(job_id, {"running"})
        await asyncio.to_thread(rabbitmq.restart_app)  # the client keeps running meanwhile
        final = await recorder.wait_for(job_id, FINAL, timeout=90)
    assert final.status == "complete"  # type: ignore[attr-defined]


async def test_two_prefixes_on_one_broker_do_not_see_each_others_updates(tmp_path: Path) -> None:
    first = PulsarAmqp(tmp_path / "a", key_prefix=rabbitmq.unique_prefix("a"))
    second = PulsarAmqp(tmp_path / "b", key_prefix=rabbitmq.unique_prefix("b"))
    seen_first, seen_second = UpdateRecorder(), UpdateRecorder()
    job_a, job_b = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        await first.start()
        await second.start()
        async with new_client(first, seen_first) as a, new_client(second, seen_second) as b:
            await a.submit(sleep_job(job_a, 0.2))
            await b.submit(sleep_job(job_b, 0.2))
            await seen_first.wait_for(job_a, FINAL)
            await seen_second.wait_for(job_b, FINAL)
    finally:
        for server in (first, second):
            await server.stop()
            await server.delete_queues()
    assert {u.job_id for u in seen_first.updates} == {job_a}  # type: ignore[attr-defined]
    assert {u.job_id for u in seen_second.updates} == {job_b}  # type: ignore[attr-defined]


async def test_job_submitted_while_pulsar_is_down_runs_once_pulsar_starts(tmp_path: Path) -> None:
    server = PulsarAmqp(tmp_path / "late", key_prefix=rabbitmq.unique_prefix("late"))
    recorder = UpdateRecorder()
    job_id = str(uuid.uuid4())
    try:
        async with new_client(server, recorder) as client:
            await client.submit(sleep_job(job_id, 0.1))
            await server.start()
            final = await recorder.wait_for(job_id, FINAL)
    finally:
        await server.stop()
        await server.delete_queues()
    assert final.status == "complete"  # type: ignore[attr-defined]
