"""The AMQP client's delivery guarantees against the real RabbitMQ broker (127.0.0.1:5672), without Pulsar:
status updates are published onto the status_update queue exactly as Pulsar publishes them (persistent
JSON on the ``pulsar`` exchange), so what is tested is the broker/consumer contract itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tesp_api.pulsar.amqp_client import (
    AmqpClientOptions,
    AmqpPulsarClient,
    PulsarAmqpUnavailable,
    PulsarStatusUpdate,
)
from tesp_api.pulsar.amqp_names import EXCHANGE, PulsarQueues
from tests.services import rabbitmq
from tests.services.pulsar_amqp import UpdateRecorder

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def queues() -> AsyncIterator[PulsarQueues]:
    names = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("c"))
    yield names
    await rabbitmq.delete_queues([*names.consumed_by_pulsar, names.status_update])


async def publish_as_pulsar(queues: PulsarQueues, body: dict[str, object] | bytes) -> None:
    connection = await aio_pika.connect(rabbitmq.URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await exchange.publish(
            aio_pika.Message(payload, content_type="application/json", delivery_mode=2),
            routing_key=queues.status_update,
        )


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(rabbitmq.URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


def client(queues: PulsarQueues, on_update: object, **options: float) -> AmqpPulsarClient:
    """Only the shared queue unless a test asks for the per-process one: delivery counts stay exact."""
    options.setdefault("own_update_queue", False)
    return AmqpPulsarClient(rabbitmq.URL, queues, on_update, AmqpClientOptions(**options))  # type: ignore[arg-type]


async def test_status_update_queue_is_declared_before_anything_is_submitted(queues: PulsarQueues) -> None:
    async with client(queues, UpdateRecorder()):
        pass
    # Published after the client stopped: it must wait in the durable queue, not be dropped.
    await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
    assert await queue_depth(queues.status_update) == 1


async def test_update_published_while_no_consumer_runs_is_delivered_on_start(queues: PulsarQueues) -> None:
    async with client(queues, UpdateRecorder()):
        pass
    await publish_as_pulsar(
        queues, {"job_id": "j1", "status": "complete", "complete": "true", "returncode": 0}
    )
    recorder = UpdateRecorder()
    async with client(queues, recorder):
        update = await recorder.wait_for("j1", {"complete"})
    assert isinstance(update, PulsarStatusUpdate) and update.returncode == 0


async def test_update_whose_callback_raises_is_redelivered(queues: PulsarQueues) -> None:
    received: list[str] = []
    stored = asyncio.Event()

    async def flaky_store(update: PulsarStatusUpdate) -> None:
        received.append(update.status)
        if len(received) == 1:
            raise RuntimeError("store unavailable")
        stored.set()

    async with client(queues, flaky_store, redelivery_delay=0.05):
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
        await asyncio.wait_for(stored.wait(), 30)
    assert received == ["running", "running"]
    assert await queue_depth(queues.status_update) == 0


async def test_update_is_acked_only_after_the_callback_returned(queues: PulsarQueues) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_store(update: PulsarStatusUpdate) -> None:
        entered.set()
        await release.wait()

    async with client(queues, slow_store):
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
        await asyncio.wait_for(entered.wait(), 30)
        unacked_while_storing = await _unacked(queues.status_update)
        release.set()
    assert unacked_while_storing == 1


async def _unacked(name: str) -> int:
    out = await asyncio.to_thread(
        subprocess.run,
        [rabbitmq.RABBITMQCTL, "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == name:
            return int(fields[1])
    return -1


CONSUMER_THAT_DIES = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from tesp_api.pulsar.amqp_client import AmqpPulsarClient
    from tesp_api.pulsar.amqp_names import PulsarQueues

    async def main(url, prefix, marker):
        async def never_stores(update):
            Path(marker).write_text(update.job_id)
            await asyncio.Event().wait()   # killed here, between receive and store
        async with AmqpPulsarClient(url, PulsarQueues.for_manager(amqp_key_prefix=prefix), never_stores):
            await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_update_received_by_a_process_that_dies_before_storing_is_redelivered(
    queues: PulsarQueues, tmp_path: Path
) -> None:
    async with client(queues, UpdateRecorder()):
        pass  # declare the queues
    await publish_as_pulsar(queues, {"job_id": "j-crash", "status": "complete", "complete": "true"})
    marker = tmp_path / "received"
    process = subprocess.Popen(
        [sys.executable, "-c", CONSUMER_THAT_DIES, rabbitmq.URL, queues.prefix, str(marker)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    try:
        for _ in range(300):
            if marker.exists() or process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert marker.read_text() == "j-crash"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    recorder = UpdateRecorder()
    async with client(queues, recorder):
        update = await recorder.wait_for("j-crash", {"complete"})
    assert update.job_id == "j-crash"  # type: ignore[attr-defined]


async def test_malformed_update_is_dropped_and_does_not_block_the_next(queues: PulsarQueues) -> None:
    recorder = UpdateRecorder()
    async with client(queues, recorder) as c:
        await publish_as_pulsar(queues, b"not json")
        await publish_as_pulsar(queues, {"status": "running"})  # no job_id
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
        await recorder.wait_for("j1", {"running"})
        assert c.stats.rejected == 2
    assert await queue_depth(queues.status_update) == 0


async def test_silent_job_gets_a_status_request_after_reconcile_after(queues: PulsarQueues) -> None:
    async with client(queues, UpdateRecorder(), reconcile_after=0.2, sweep_interval=0.1) as c:
        c.track("silent-job")
        for _ in range(100):
            if c.stats.published["status"]:
                break
            await asyncio.sleep(0.1)
    assert await queue_depth(queues.status) >= 1


async def test_job_that_reported_a_final_state_is_no_longer_reconciled(queues: PulsarQueues) -> None:
    recorder = UpdateRecorder()
    async with client(queues, recorder, reconcile_after=3600) as c:
        c.track("j1")
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "complete", "complete": "true"})
        await recorder.wait_for("j1", {"complete"})
        assert "j1" not in c.tracked_jobs


async def test_reconcile_sweep_never_exceeds_its_budget(queues: PulsarQueues) -> None:
    # One request a second at most; the background sweep is parked (sweep_interval) and driven by hand.
    options = {"reconcile_after": 0.01, "reconcile_max_per_minute": 60, "sweep_interval": 3600}
    async with client(queues, UpdateRecorder(), **options) as c:
        for n in range(500):
            c.track(f"job-{n}")
        await asyncio.sleep(0.05)
        sent = 0
        for _ in range(5):
            sent += await c.sweep_once()
            await asyncio.sleep(0.1)
    assert 1 <= sent <= 2


async def test_every_worker_on_one_prefix_receives_each_update(queues: PulsarQueues) -> None:
    first, second = UpdateRecorder(), UpdateRecorder()
    async with client(queues, first, own_update_queue=True), client(queues, second, own_update_queue=True):
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
        await first.wait_for("j1", {"running"})
        await second.wait_for("j1", {"running"})


async def test_an_update_arriving_through_both_queues_is_processed_once(queues: PulsarQueues) -> None:
    recorder = UpdateRecorder()
    async with client(queues, recorder, own_update_queue=True) as c:
        await publish_as_pulsar(queues, {"job_id": "j1", "status": "running", "complete": "false"})
        await recorder.wait_for("j1", {"running"})
        for _ in range(100):
            if c.stats.received == 2:
                break
            await asyncio.sleep(0.05)
        assert c.stats.duplicates == 1
    assert recorder.statuses("j1") == ["running"]


async def test_the_answer_to_a_status_request_is_delivered_even_if_identical_to_an_earlier_update(
    queues: PulsarQueues,
) -> None:
    """A replica that takes a running job over asks for its status; if the first answer came too late
    (after the caller gave up waiting), Pulsar's next answer has the same body. It must still reach the
    caller, not be taken for the copy through the other queue (seen: five status requests in a row
    unanswered, the takeover waited until the job ended)."""
    recorder = UpdateRecorder()
    body = {"job_id": "j1", "status": "running", "complete": "false"}
    async with client(queues, recorder) as c:
        await publish_as_pulsar(queues, body)  # the late first answer
        await recorder.wait_for("j1", {"running"})
        await c.request_status("j1")
        await publish_as_pulsar(queues, body)  # Pulsar answers again, byte for byte the same
        for _ in range(200):
            if len(recorder.statuses("j1")) == 2:
                break
            await asyncio.sleep(0.05)
    assert recorder.statuses("j1") == ["running", "running"]


async def test_killed_jobs_are_asked_about_even_when_the_budget_is_spent(queues: PulsarQueues) -> None:
    options = {"reconcile_max_per_minute": 1, "sweep_interval": 3600, "kill_first_check": 0.05}
    async with client(queues, UpdateRecorder(), **options) as c:
        for n in range(3):
            await c.kill(f"killed-{n}")
        await asyncio.sleep(0.1)
        sent = await c.sweep_once()
    assert sent == 3


async def test_broker_password_appears_in_no_log_line_or_error(
    queues: PulsarQueues, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = AmqpPulsarClient(
        "amqp://guest:not-the-s3cret@127.0.0.1:5672/",
        queues,
        UpdateRecorder(),
        AmqpClientOptions(connect_timeout=1),
    )
    with pytest.raises(PulsarAmqpUnavailable) as refused:
        await bad.start()
    assert "s3cret" not in str(refused.value)
    assert "s3cret" not in caplog.text
