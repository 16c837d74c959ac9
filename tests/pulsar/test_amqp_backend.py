"""The AMQP backend's view of a job, fed by status updates published exactly as Pulsar publishes them
(persistent JSON on the ``pulsar`` exchange) through the real RabbitMQ broker; no Pulsar needed here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tesp_api.pulsar.amqp import FINISHED_RESENT_REASON, AmqpBackend
from tesp_api.pulsar.amqp_client import AmqpClientOptions
from tesp_api.pulsar.amqp_names import PulsarQueues
from tesp_api.pulsar.amqp_staging import StagingServer, StagingTokens
from tesp_api.pulsar.port import RESUBMIT_KEY, BackendUnavailable, JobFile, JobSpec
from tesp_api.pulsar.retrying import SUBMITTED_STATUSES
from tests.pulsar.test_amqp_client import publish_as_pulsar
from tests.services import rabbitmq

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[AmqpBackend]:
    queues = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("b"))
    staging = StagingServer(tmp_path / "received", StagingTokens(b"k" * 32, ttl=60))
    b = AmqpBackend("default", rabbitmq.URL, queues, staging, options=AmqpClientOptions(reconcile_after=3600))
    await b.start()
    yield b
    await b.aclose()
    await rabbitmq.delete_queues([*queues.consumed_by_pulsar, queues.status_update])


async def submitted(backend: AmqpBackend, job_id: str) -> None:
    spec = JobSpec(
        job_id=job_id, script_name="tes-job.sh", files=[JobFile("tes-job.sh", "tool", data=b"true\n")]
    )
    await backend.prepare(spec)
    await backend.submit(spec)


async def push(backend: AmqpBackend, job_id: str, status: str, **extra: object) -> None:
    """Publish like Pulsar and wait until the backend has taken it in."""
    await publish_as_pulsar(
        backend.queues, {"job_id": job_id, "status": status, "complete": "false", **extra}
    )
    await backend.wait_for_change(job_id, 10)
    await asyncio.sleep(0.05)  # the duplicate through the second queue, if any


async def push_doubted_lost(backend: AmqpBackend, job_id: str, **extra: object) -> None:
    """Publish a "lost" like Pulsar and wait until the backend has taken it in without believing it."""
    await publish_as_pulsar(backend.queues, {"job_id": job_id, "status": "lost", "complete": "true", **extra})
    deadline = asyncio.get_running_loop().time() + 10
    while job_id not in backend._lost_since:
        assert asyncio.get_running_loop().time() < deadline, "the lost update never arrived"
        await asyncio.sleep(0.02)


async def test_a_submitted_job_reports_queued_until_pulsar_speaks(backend: AmqpBackend) -> None:
    await submitted(backend, "job-1")
    assert (await backend.status("job-1")).status == "queued"


async def test_pushed_status_is_what_status_answers(backend: AmqpBackend) -> None:
    await submitted(backend, "job-1")
    await push(backend, "job-1", "running")
    assert (await backend.status("job-1")).status == "running"


async def test_lost_without_a_job_directory_for_a_sent_setup_is_not_believed_however_often_said(
    backend: AmqpBackend,
) -> None:
    await submitted(backend, "job-1")
    # Pulsar answered status requests before it took the setup in (still in its queue, e.g. a
    # backlog after a broker restart): no job directory yet. Said once, and again at the next
    # reconcile (not a duplicate of the first): the job is still waiting to be taken in.
    await publish_as_pulsar(backend.queues, {"job_id": "job-1", "status": "lost", "complete": "true"})
    await asyncio.sleep(0.3)
    assert (await backend.status("job-1")).status == "queued"
    await publish_as_pulsar(
        backend.queues, {"job_id": "job-1", "status": "lost", "complete": "true", "returncode": None}
    )
    await asyncio.sleep(0.3)
    assert (await backend.status("job-1")).status == "queued"
    # Pulsar takes the setup in and runs the job: its updates are what counts.
    await push(backend, "job-1", "complete", returncode=0)
    assert (await backend.status("job-1")).status == "complete"


async def test_lost_without_a_job_directory_is_believed_once_the_first_lost_is_older_than_the_grace(
    tmp_path: Path,
) -> None:
    """The bound: a setup that never reaches Pulsar (its queue purged, say) does not leave the task
    waiting for ever. The grace counts from the first "lost" (Pulsar answering), not from the submit."""
    queues = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("b"))
    staging = StagingServer(tmp_path / "received", StagingTokens(b"k" * 32, ttl=60))
    b = AmqpBackend(
        "default",
        rabbitmq.URL,
        queues,
        staging,
        options=AmqpClientOptions(reconcile_after=3600),
        unheard_lost_grace=0.5,
    )
    try:
        await submitted(b, "job-1")
        await publish_as_pulsar(queues, {"job_id": "job-1", "status": "lost", "complete": "true"})
        await asyncio.sleep(0.6)
        assert (await b.status("job-1")).status == "queued"  # the first is never believed
        await push(b, "job-1", "lost", returncode=None)
        assert (await b.status("job-1")).status == "lost"
    finally:
        await b.aclose()
        await rabbitmq.delete_queues([*queues.consumed_by_pulsar, queues.status_update])


# The job directory of a job Pulsar 0.16 launched, as its "lost" lists it (read off a real one).
LAUNCHED_JOB_DIRECTORY = [
    "launch_config",
    "submitted",
    "preprocessed",
    "tool_files",
    "inputs",
    "working",
    "pid",
]


async def test_lost_for_a_job_pulsar_had_launched_is_believed_at_once(backend: AmqpBackend) -> None:
    await submitted(backend, "job-1")
    # What Pulsar publishes when it cannot re-attach to the job after its restart: the job directory
    # holds "preprocessed". (It answers later status requests with a stale "running".)
    await push(backend, "job-1", "lost", returncode=None, job_directory_contents=LAUNCHED_JOB_DIRECTORY)
    assert (await backend.status("job-1")).status == "lost"


async def test_lost_listing_a_job_directory_pulsar_has_not_launched_is_not_believed(
    backend: AmqpBackend,
) -> None:
    """Pulsar's status thread checks that the job directory exists and lists it a moment later; its
    setup thread may create the directory in between: a "lost" listing a directory of a job still
    being set up (a fresh-clone CI run ended a task PREEMPTED so)."""
    await submitted(backend, "job-1")
    await push_doubted_lost(
        backend, "job-1", returncode=None, job_directory_contents=["launch_config", "inputs"]
    )
    assert (await backend.status("job-1")).status == "queued"
    await push(backend, "job-1", "complete", returncode=0)
    assert (await backend.status("job-1")).status == "complete"


async def test_a_late_lost_after_pulsar_spoke_of_the_job_is_not_believed(backend: AmqpBackend) -> None:
    """An answer Pulsar computed before it took the setup in, delivered after the job's own updates
    (Pulsar's threads publish through one outbox in the order they finish; the update comes through
    two queues): the job is not lost, its last status stands."""
    await submitted(backend, "job-1")
    await push(backend, "job-1", "running")
    await push_doubted_lost(backend, "job-1", returncode=None)
    assert (await backend.status("job-1")).status == "running"
    await push(backend, "job-1", "complete", returncode=0)
    assert (await backend.status("job-1")).status == "complete"


async def test_a_late_running_update_does_not_undo_completion(backend: AmqpBackend) -> None:
    await submitted(backend, "job-1")
    await push(backend, "job-1", "complete")
    await publish_as_pulsar(backend.queues, {"job_id": "job-1", "status": "running", "complete": "false"})
    await asyncio.sleep(0.3)
    assert (await backend.status("job-1")).status == "complete"


async def test_updates_of_jobs_this_process_does_not_drive_are_ignored(backend: AmqpBackend) -> None:
    await submitted(backend, "mine")
    await publish_as_pulsar(
        backend.queues, {"job_id": "someone-elses", "status": "running", "complete": "false"}
    )
    await push(backend, "mine", "running")  # published after it: processed after it
    assert "someone-elses" not in backend._statuses  # nothing kept for it


async def test_clean_forgets_the_job_and_its_received_files(backend: AmqpBackend) -> None:
    await submitted(backend, "job-1")
    received = backend.staging.received_dir("job-1")
    received.mkdir(parents=True)
    (received / "tes-meta.tar").write_bytes(b"x")
    await backend.clean("job-1")
    assert not received.exists()
    assert "job-1" not in backend.client.tracked_jobs


async def test_a_job_whose_first_lost_was_not_believed_is_asked_about_again(tmp_path: Path) -> None:
    queues = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("b"))
    staging = StagingServer(tmp_path / "received", StagingTokens(b"k" * 32, ttl=60))
    options = AmqpClientOptions(reconcile_after=0.2, sweep_interval=0.1)
    b = AmqpBackend("default", rabbitmq.URL, queues, staging, options=options)
    try:
        await submitted(b, "job-1")
        await publish_as_pulsar(queues, {"job_id": "job-1", "status": "lost", "complete": "true"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while "job-1" not in b._lost_since:  # the first "lost" taken in (and not believed)
            assert loop.time() < deadline, "the lost update never arrived"
            await asyncio.sleep(0.05)
        asked_before = b.client.stats.published["status"]
        while b.client.stats.published["status"] == asked_before:  # the reconcile sweep asks again
            assert loop.time() < deadline, "never asked about again"
            await asyncio.sleep(0.05)
    finally:
        await b.aclose()
        await rabbitmq.delete_queues([*queues.consumed_by_pulsar, queues.status_update])


async def take_setup(backend: AmqpBackend) -> dict[str, object] | None:
    """The next setup message in Pulsar's setup queue (taken out), or None."""
    connection = await aio_pika.connect(rabbitmq.URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(backend.queues.setup, passive=True)
        message = await queue.get(no_ack=True, fail=False)
        return None if message is None else dict(json.loads(message.body))


async def test_a_finished_job_pulsar_lost_is_set_up_again_restoring_its_results_without_inputs(
    backend: AmqpBackend,
) -> None:
    """What Pulsar 0.16 publishes for a job that finished while it was killed (its job script wrote
    return_code, the runner tes-meta.tar): not lost work. The driver is asked once to send the setup
    again; that setup has Pulsar copy the results aside before its job script resets working/,
    puts them back, and fetches no inputs. A re-send the broker refused is not taken for one that
    started (the retrying submit asks first)."""
    spec = JobSpec(
        job_id="job-1",
        script_name="tes-job.sh",
        files=[JobFile("tes-job.sh", "tool", data=b"true\n"), JobFile("in-0", "input", data=b"x\n")],
        outputs_for_remote_staging=["tes-meta.tar", "tes-out/data/out.txt"],
    )
    await backend.prepare(spec)
    await backend.submit(spec)
    assert await take_setup(backend) is not None  # the first setup, taken in by Pulsar
    await push(backend, "job-1", "running")
    await publish_as_pulsar(
        backend.queues,
        {
            "job_id": "job-1",
            "status": "lost",
            "complete": "true",
            "returncode": 0,
            "job_directory_contents": LAUNCHED_JOB_DIRECTORY,
            "working_directory": "/srv/pulsar/staging/job-1/working",
            "working_directory_contents": ["tes-meta.tar", "tes-out/data/out.txt", "fs/data/out.txt"],
        },
    )
    await backend.wait_for_change("job-1", 10)
    handed = await backend.status("job-1")
    assert (handed.status, handed.raw.get(RESUBMIT_KEY)) == ("running", FINISHED_RESENT_REASON)
    assert not (await backend.status("job-1")).raw.get(RESUBMIT_KEY)  # asked once
    policy = f"tesp-test-{backend.queues.prefix}"
    refuse = '{"max-length":0,"overflow":"reject-publish"}'
    rabbitmq._ctl("set_policy", "--apply-to", "queues", policy, f"^{backend.queues.setup}$", refuse)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.submit(JobSpec(job_id="job-1", script_name="tes-job.sh", files=[]))
    finally:
        rabbitmq._ctl("clear_policy", policy)
    assert (await backend.status("job-1")).status not in SUBMITTED_STATUSES  # so it is sent again
    await backend.submit(JobSpec(job_id="job-1", script_name="tes-job.sh", files=[]))
    setup = await take_setup(backend)
    assert setup is not None
    assert str(setup["command_line"]).startswith(
        "cp -R __PULSAR_JOB_DIRECTORY__/inputs/tes-restore/. __PULSAR_JOB_DIRECTORY__/working/ && "
    )
    actions = setup["remote_staging"]["setup"]  # type: ignore[index]
    assert [(a["name"], a["action"]["action_type"]) for a in actions] == [
        ("tes-job.sh", "message"),
        ("tes-restore/tes-meta.tar", "remote_copy"),
        ("tes-restore/tes-out/data/out.txt", "remote_copy"),
    ]
    assert actions[2]["action"]["source"] == {
        "path": "/srv/pulsar/staging/job-1/working/tes-out/data/out.txt"
    }
