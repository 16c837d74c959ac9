"""What the AMQP backend keeps for other replicas: the setup in the task's store record, the staging key
in the store, the files in the shared staging directory, nothing a takeover needs on one worker's disk.

Real RabbitMQ (127.0.0.1:5672) and a real SQLite store; no Pulsar: the setup message is read back
from the broker's queue, as Pulsar would receive it. Two AmqpBackend objects with separate work
directories stand for two replicas (the first closed, as if its host had died).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tesp_api.pulsar.amqp import SETUP_KEY, AmqpBackend
from tesp_api.pulsar.amqp_client import AmqpClientOptions
from tesp_api.pulsar.amqp_names import PulsarQueues
from tesp_api.pulsar.amqp_staging import StagingServer, StagingTokens
from tesp_api.pulsar.port import BackendError, JobFile, JobSpec
from tesp_api.store.sqlite import SqliteTaskStore
from tests.engine.conftest import submit
from tests.services import rabbitmq

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    s = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def queues() -> AsyncIterator[PulsarQueues]:
    q = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("ss"))
    yield q
    await rabbitmq.delete_queues([*q.consumed_by_pulsar, q.status_update])


class Replicas:
    """Backends on one store and one staging directory; each has a key that is not the store's."""

    def __init__(self, store: SqliteTaskStore, queues: PulsarQueues, staging_dir: Path) -> None:
        self.store, self.queues, self.staging_dir = store, queues, staging_dir
        self.made: list[AmqpBackend] = []

    def backend(self, staging_dir: Path | None = None) -> AmqpBackend:
        staging = StagingServer(staging_dir or self.staging_dir, StagingTokens(b"unused-local-key", ttl=600))
        b = AmqpBackend(
            "default",
            rabbitmq.URL,
            self.queues,
            staging,
            options=AmqpClientOptions(reconcile_after=3600),
            store=self.store,
        )
        self.made.append(b)
        return b

    async def close(self) -> None:
        for b in self.made:
            await b.aclose()


@pytest.fixture
async def replicas(store: SqliteTaskStore, queues: PulsarQueues, tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(store, queues, tmp_path / "shared-staging")
    yield r
    await r.close()


async def a_job(store: SqliteTaskStore, tmp_path: Path) -> JobSpec:
    task_id = await submit(store, {"executors": [{"image": "a", "command": ["true"]}]})
    source = tmp_path / f"{task_id}.input"  # in the first replica's scratch
    source.write_text("input bytes\n")
    return JobSpec(
        job_id=task_id,
        script_name="tes-job.sh",
        files=[
            JobFile("tes-job.sh", "tool", data=b"cat ../inputs/tes-in-0\n"),
            JobFile("tes-in-0", "input", source=source),
        ],
        outputs_for_remote_staging=["tes-meta.tar"],
    )


async def setup_message(queues: PulsarQueues) -> dict[str, object]:
    connection = await aio_pika.connect(rabbitmq.URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queues.setup, passive=True)
        message = await queue.get(no_ack=True, fail=True)
        assert message is not None
        return dict(json.loads(message.body))
    finally:
        await connection.close()


async def test_the_setup_is_recorded_in_the_task_record_with_file_names_only(
    replicas: Replicas, store: SqliteTaskStore, tmp_path: Path
) -> None:
    spec = await a_job(store, tmp_path)
    await replicas.backend().prepare(spec)
    record = await store.get(spec.job_id)
    assert record is not None
    assert record.backend[SETUP_KEY] == {
        "files": [
            {"name": "tes-job.sh", "type": "tool", "inline": True},
            {"name": "tes-in-0", "type": "input", "staged": True},
        ],
        "outputs": ["tes-meta.tar"],
        "sent": False,
    }
    assert not list(replicas.staging_dir.glob(".setups/*.json"))  # no record on a local disk


async def test_replicas_on_one_store_sign_with_one_key_not_their_own(
    replicas: Replicas, tmp_path: Path
) -> None:
    first, second = replicas.backend(), replicas.backend(tmp_path / "elsewhere")
    await first.start()
    await second.start()
    token = first.staging.tokens.sign("out", "job")
    assert second.staging.tokens.verify(token, "out", "job")
    assert not StagingTokens(b"unused-local-key", ttl=600).verify(token, "out", "job")


async def test_a_setup_prepared_by_a_dead_replica_is_sent_by_another_from_the_store(
    replicas: Replicas, store: SqliteTaskStore, tmp_path: Path
) -> None:
    spec = await a_job(store, tmp_path)
    first = replicas.backend()
    await first.prepare(spec)
    await first.aclose()
    spec.files[1].source.unlink()  # type: ignore[union-attr]  # the first host's scratch is gone
    second = replicas.backend()
    await second.start()
    await second.submit(JobSpec(job_id=spec.job_id, script_name="tes-job.sh", files=[]))  # as the driver does
    message = await setup_message(replicas.queues)
    actions = {a["name"]: a["action"] for a in message["remote_staging"]["setup"]}  # type: ignore[index]
    assert (
        actions["tes-job.sh"]["contents"] == "cat ../inputs/tes-in-0\n"
    )  # inline, read back from the staging dir
    assert actions["tes-in-0"]["url"].startswith(second.staging.base_url)  # served by the living replica
    assert second.staging.input_path(spec.job_id, "tes-in-0").read_text() == "input bytes\n"
    record = await store.get(spec.job_id)
    assert record is not None and record.backend[SETUP_KEY]["sent"] is True


async def test_a_replica_without_the_shared_staging_dir_refuses_to_send_saying_so(
    replicas: Replicas, store: SqliteTaskStore, tmp_path: Path
) -> None:
    spec = await a_job(store, tmp_path)
    await replicas.backend().prepare(spec)
    elsewhere = replicas.backend(tmp_path / "not-shared")
    with pytest.raises(BackendError, match="must share pulsar.staging_dir"):
        await elsewhere.submit(JobSpec(job_id=spec.job_id, script_name="tes-job.sh", files=[]))


async def test_the_first_upload_a_replica_takes_in_is_recorded_in_the_store(
    replicas: Replicas, store: SqliteTaskStore, tmp_path: Path
) -> None:
    import httpx

    spec = await a_job(store, tmp_path)
    backend = replicas.backend()
    await backend.start()
    async with httpx.AsyncClient() as http:
        response = await http.post(
            backend.staging.files_endpoint(spec.job_id) + "&path=tes-meta.tar&file_type=output",
            files={"file": ("f", b"x")},
        )
    assert response.status_code == 200
    record = await store.get(spec.job_id)
    assert record is not None
    assert [k for k in record.backend if k.startswith("amqp_received_by:")] == [
        f"amqp_received_by:{backend.staging.replica}"
    ]
