"""Crash safety of the AMQP backend across a restart of this service (docs/amqp.md, "Restarts of tesp-api").

Two windows used to end a task in SYSTEM_ERROR:

1. the setup message was sent, then ``tesp-api serve`` died before Pulsar downloaded the inputs (the
   registrations were in memory only);
2. the store said "submitting", then the process died before the setup message was published.

All parts are real: the RabbitMQ broker, ``pulsar-main`` and ``tesp-api serve`` processes (killed with
SIGKILL). The crash windows are made to last, not raced: window 1 by keeping Pulsar stopped (the setup
waits in its queue), window 2 by a broker policy on this test's own setup queue that refuses new
messages (the publish is nacked, the driver retries, the store already says "submitting"). The two
"backend objects" tests drive two AmqpBackend instances in one process (the first dropped without
being closed, standing for a dead process) to show the decision itself: Pulsar asked first, the setup
sent again only when Pulsar does not know the job, never when it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import tes

from tesp_api.local import free_port, job_process_groups
from tesp_api.pulsar.amqp import AmqpBackend
from tesp_api.pulsar.amqp_client import AmqpClientOptions
from tesp_api.pulsar.amqp_names import PulsarQueues
from tesp_api.pulsar.amqp_staging import StagingServer, StagingTokens
from tesp_api.pulsar.port import LOST_REASON_KEY, RESUBMIT_KEY, JobFile, JobSpec, JobStatus
from tests.engine.serve_process import ServeProcess
from tests.pulsar.test_amqp_client import publish_as_pulsar
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp, running_pulsar_amqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(180)]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


# ---- helpers -------------------------------------------------------------------------------------


def _ctl(*args: str) -> None:
    done = subprocess.run(
        [rabbitmq.RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def refuse_new_setups(pulsar: PulsarAmqp) -> str:
    """A policy on this test's setup queue only: at most one message, further publishes nacked."""
    name = f"tesp-test-{pulsar.key_prefix}"
    pattern = f"^{pulsar.queue_name('setup')}$"
    _ctl("set_policy", "--apply-to", "queues", name, pattern, '{"max-length":1,"overflow":"reject-publish"}')
    return name


async def queued_messages(pulsar: PulsarAmqp, queue: str) -> int:
    connection = await aio_pika.connect(pulsar.amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(pulsar.queue_name(queue), passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def until(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.1)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve(workdir: Path, pulsar: PulsarAmqp, results: Path, staging_port: int, **env: str) -> ServeProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return ServeProcess(
        workdir,
        "",  # no REST url: AMQP mode
        TESP_API_PULSAR__AMQP_URL=pulsar.amqp_url,
        TESP_API_PULSAR__AMQP_KEY_PREFIX=pulsar.key_prefix,
        TESP_API_PULSAR__STAGING_LISTEN=f"127.0.0.1:{staging_port}",  # fixed, as in a deployment
        TESP_API_ENGINE__LEASE_SECONDS="3",
        TESP_API_TRANSFER__ALLOWED_DIRS=f'["{results}"]',
        **env,
    )


def copy_task(results: Path, name: str) -> tes.Task:
    """A task with a URL input (served to Pulsar by the staging server) copied to an output."""
    return tes.Task(
        inputs=[tes.Input(path="/data/in.txt", url=f"file://{results}/{name}.in")],
        outputs=[tes.Output(path="/data/out.txt", url=f"file://{results}/{name}.out")],
        executors=[tes.Executor(image="a", command=["cp", "/data/in.txt", "/data/out.txt"])],
    )


def wait_state(client: tes.HTTPClient, task_id: str, states: set[str], timeout: float = 90) -> tes.Task:
    deadline = time.monotonic() + timeout
    while True:
        got = client.get_task(task_id, view="FULL")
        if got.state in states:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} never in {states} (last {got.state})")
        time.sleep(0.1)


# ---- kill -9 of tesp-api serve in both windows ---------------------------------------------------


async def test_tasks_killed_in_either_setup_window_complete_after_a_restart(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "sent.in").write_text("sent before the crash\n")
    (results / "unsent.in").write_text("never sent before the crash\n")
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("r"))
    staging_port = free_port()
    policy: str | None = None
    first = serve(tmp_path / "serve", pulsar, results, staging_port)
    second = serve(tmp_path / "serve", pulsar, results, staging_port, TESP_API_PULSAR__CLIENT_TIMEOUT="3")
    try:
        first.start()
        client = tes.HTTPClient(first.url, timeout=10)
        # Window 1: Pulsar is stopped, so the setup (with the input's URL) waits in its queue.
        sent = client.create_task(copy_task(results, "sent"))
        await until(lambda: _has_setup(pulsar), "the first setup message queued")
        # Window 2: new setups are refused by the broker; the store says "submitting" (the task is
        # INITIALIZING until Pulsar runs it), nothing is sent.
        policy = refuse_new_setups(pulsar)
        unsent = client.create_task(copy_task(results, "unsent"))
        await until(
            lambda: asyncio.to_thread(
                lambda: "broker refused the setup message" in first.log_file.read_text()
            ),
            "the second setup refused by the broker",
        )
        assert client.get_task(unsent).state == "INITIALIZING"
        first.kill()
        _ctl("clear_policy", policy)
        policy = None
        assert await queued_messages(pulsar, "setup") == 1  # only the first task's setup left

        second.start()
        # The staging server starts with the backend, when a driver takes the tasks over.
        await until(lambda: asyncio.to_thread(listening, staging_port), "the staging server listening")
        await pulsar.start()
        client = tes.HTTPClient(second.url, timeout=10)
        done = {task_id: wait_state(client, task_id, FINAL) for task_id in (sent, unsent)}
    finally:
        if policy is not None:
            _ctl("clear_policy", policy)
        first.stop()
        second.stop()
        await pulsar.stop()
        await pulsar.delete_queues()
    for task in done.values():
        assert task.state == "COMPLETE", task.logs[0].system_logs
    assert (results / "sent.out").read_text() == "sent before the crash\n"
    assert (results / "unsent.out").read_text() == "never sent before the crash\n"


async def _has_setup(pulsar: PulsarAmqp) -> bool:
    try:
        return await queued_messages(pulsar, "setup") >= 1
    except aio_pika.exceptions.ChannelClosed:  # not declared yet
        return False


# ---- the backend's decision, driven directly -----------------------------------------------------


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "o") as server:
        yield server


@dataclasses.dataclass
class Service:
    """What survives a restart of this service: its work directory, staging address and key."""

    root: Path
    pulsar: PulsarAmqp
    port: int = dataclasses.field(default_factory=free_port)

    def backend(self) -> AmqpBackend:
        staging = StagingServer(
            self.root / "received",
            StagingTokens(b"k" * 32, ttl=600),
            listen=f"127.0.0.1:{self.port}",
        )
        return AmqpBackend(
            "default",
            self.pulsar.amqp_url,
            PulsarQueues.for_manager(amqp_key_prefix=self.pulsar.key_prefix),
            staging,
            options=AmqpClientOptions(reconcile_after=3600),
            status_timeout=10,
            lost_recheck=0.5,
        )


def counting_job(job_id: str, root: Path) -> JobSpec:
    """Appends a line to ``runs`` each time it runs and copies its input to an output."""
    source = root / "in-0"
    source.write_text("payload\n")
    script = f'echo run >> {root / "runs"}\ncp "$(dirname "$0")/../inputs/in-0" result.txt\n'
    return JobSpec(
        job_id=job_id,
        script_name="tes-job.sh",
        files=[JobFile("tes-job.sh", "tool", data=script.encode()), JobFile("in-0", "input", source=source)],
        outputs_for_remote_staging=["result.txt"],
    )


async def submitted_by_a_service_that_dies(service: Service, spec: JobSpec) -> None:
    """With Pulsar stopped, the job is prepared and submitted (the setup confirmed by the broker,
    waiting in Pulsar's setup queue), then the service's backend is dropped: the process died."""
    await service.pulsar.stop()
    before = service.backend()
    await before.prepare(spec)
    await before.submit(spec)
    await before.aclose()


async def final_status(backend: AmqpBackend, job_id: str) -> JobStatus:
    while not (status := await backend.status(job_id)).is_final:
        await backend.wait_for_change(job_id, 5)
    return status


async def test_a_setup_never_sent_before_a_restart_is_reported_unsubmitted_then_runs_once(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    service = Service(tmp_path, pulsar)
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    before = service.backend()
    await before.prepare(spec)
    await before.aclose()  # the process dies before the submit: only the disk remains
    after = service.backend()
    try:
        status = await after.status(job_id)
        assert status.status == "preprocessing"  # what the driver answers with a submit
        await after.submit(JobSpec(job_id=job_id, script_name="tes-job.sh", files=[]))  # as the driver does
        final = await final_status(after, job_id)
        received = after.staging.received_file(job_id, "result.txt")
        assert received is not None and received.read_text() == "payload\n"
    finally:
        await after.aclose()
    assert final.status == "complete"
    assert (tmp_path / "runs").read_text() == "run\n"


async def test_a_job_pulsar_knows_is_not_sent_again_after_a_restart(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    service = Service(tmp_path, pulsar)
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    before = service.backend()
    await before.prepare(spec)
    await before.submit(spec)
    # The crash fell between the broker's confirm and the record saying so.
    prepared = before._load_prepared(job_id)
    assert prepared is not None
    before._save_prepared(job_id, dataclasses.replace(prepared, sent=False))
    assert (await final_status(before, job_id)).status == "complete"
    await before.aclose()
    after = service.backend()
    try:
        status = await after.status(job_id)
    finally:
        await after.aclose()
    assert status.status == "complete"  # Pulsar's own answer: no second setup
    assert (tmp_path / "runs").read_text() == "run\n"


# ---- a Pulsar restart while the job runs ----------------------------------------------------------


async def test_job_lost_by_a_pulsar_restart_ends_preempted_saying_why(tmp_path: Path) -> None:
    """Lost work: the spec's PREEMPTED (workflow engines retry it), not SYSTEM_ERROR."""
    results = tmp_path / "results"
    results.mkdir()
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("l"))
    server = serve(tmp_path / "serve", pulsar, results, free_port())
    groups: list[int] = []  # the job's process group: its pid file goes with the job's cleanup
    try:
        await pulsar.start()
        server.start()
        client = tes.HTTPClient(server.url, timeout=10)
        task_id = client.create_task(tes.Task(executors=[tes.Executor(image="a", command=["sleep", "60"])]))
        await until(lambda: asyncio.to_thread(pulsar.job_ids_with_pid_files), "the job running in Pulsar")
        groups += job_process_groups(pulsar.staging_directory).values()
        await pulsar.restart()  # queued_python cannot re-attach to the running job: Pulsar says "lost"
        done = wait_state(client, task_id, FINAL)
    finally:
        server.stop()
        await pulsar.stop()
        await pulsar.delete_queues()
        for pgid in groups:  # the orphan the lost job left (Pulsar cannot kill it any more)
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
    assert done.state == "PREEMPTED"
    assert any(
        line.startswith("PREEMPTED: lost work") and "most likely Pulsar was restarted" in line
        for line in done.logs[0].system_logs
    )


# ---- a setup confirmed sent that Pulsar has not taken in yet --------------------------------------


async def test_a_sent_setup_pulsar_has_not_taken_in_yet_is_not_lost_after_a_restart(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    """The intermittent SYSTEM_ERROR "Pulsar does not know the job any more (lost)" of the crash test
    above: Pulsar answered the restarted service's status requests before it took in the setup still
    waiting in its queue. Made to last here: the setup message is held (unacknowledged) by this test
    while Pulsar answers, then handed back to the queue."""
    service = Service(tmp_path, pulsar)
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    await submitted_by_a_service_that_dies(service, spec)
    holder = await aio_pika.connect(pulsar.amqp_url)
    after = service.backend()
    try:
        channel = await holder.channel()
        queue = await channel.declare_queue(pulsar.queue_name("setup"), passive=True)
        held = await queue.get(no_ack=False, fail=True)
        assert held is not None
        await pulsar.start()
        first = await after.status(job_id)
        again = await after.status(job_id)  # the driver's next poll
        await channel.close()  # the setup goes back to the queue; Pulsar takes it in now
        final = await final_status(after, job_id)
    finally:
        await holder.close()
        await after.aclose()
    assert not first.is_final and not again.is_final, (first, again)
    assert final.status == "complete"
    assert (tmp_path / "runs").read_text() == "run\n"


# ---- a "lost" listing the job directory Pulsar's setup thread is creating -------------------------


def lost_while_the_directory_appears(job_id: str, scratch: Path) -> dict[str, object]:
    """Pulsar's answer to a status request when its setup thread creates the job directory while its
    status thread answers: ``stateful.get_status`` found no directory ("lost"), then
    ``full_status`` listed the one that had appeared meanwhile (launched: not). Built with Pulsar's
    own JobDirectory and the fields of its ``__job_complete_dict``, listing what a real Pulsar 0.16
    listed in such an answer (2 of 40 starts with one setup and one status request queued:
    metadata, working, tool_version, tool_id, outputs, configs, inputs, tool_files). The two
    threads' race (the fresh-clone CI failure of the kill -9 test above, both consumers starting
    together) cannot be made to last, so the test answers the request as that status thread did."""
    from pulsar.managers.base import JobDirectory  # type: ignore[import-untyped]

    scratch.mkdir(parents=True, exist_ok=True)
    directory = JobDirectory(str(scratch), job_id)
    directory.setup()
    for name in ("metadata", "working", "outputs", "configs", "inputs", "tool_files"):
        directory.make_directory(name)
    directory.write_file("tool_id", "tesp-api")
    directory.write_file("tool_version", "1.0")
    return {
        "job_id": job_id,
        "complete": "true",
        "status": "lost",
        "returncode": None,
        "stdout": "",
        "stderr": "",
        "job_stdout": "",
        "job_stderr": "",
        "working_directory": directory.working_directory(),
        "metadata_directory": directory.metadata_directory(),
        "job_directory": directory.job_directory,
        "working_directory_contents": directory.working_directory_contents(),
        "metadata_directory_contents": directory.metadata_directory_contents(),
        "outputs_directory_contents": directory.outputs_directory_contents(),
        "job_directory_contents": directory.job_directory_contents(),
        "pulsar_version": "0.16.0",
    }


async def take_status_request(pulsar: PulsarAmqp, timeout: float = 30) -> str:
    """Take the next status request out of Pulsar's status queue, as Pulsar's status consumer does."""
    connection = await aio_pika.connect(pulsar.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(pulsar.queue_name("status"), passive=True)
        deadline = time.monotonic() + timeout
        while (message := await queue.get(no_ack=True, fail=False)) is None:
            assert time.monotonic() < deadline, "no status request"
            await asyncio.sleep(0.05)
        return str(json.loads(message.body)["job_id"])
    finally:
        await connection.close()


async def test_a_lost_listing_a_job_directory_pulsar_is_still_creating_is_not_believed_after_a_restart(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    """The fresh-clone CI failure of test_tasks_killed_in_either_setup_window_complete_after_a_restart:
    the restarted service asks about a job whose confirmed setup waits in Pulsar's queue, Pulsar's
    status thread answers "lost" listing the job directory its setup thread is just creating, and that
    "lost" was believed at once as one of a job Pulsar had set up and could not re-attach to: PREEMPTED
    although Pulsar then ran the job. Only a job directory holding ``preprocessed`` (launched) means
    that now."""
    service = Service(tmp_path, pulsar)
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    await submitted_by_a_service_that_dies(service, spec)
    after = service.backend()
    try:
        asking = asyncio.create_task(after.status(job_id))  # a driver taking the task over
        assert await take_status_request(pulsar) == job_id
        answer = lost_while_the_directory_appears(job_id, tmp_path / "race")
        await publish_as_pulsar(after.queues, answer)
        first = await asking
        await pulsar.start()  # takes the setup in and runs the job
        final = await final_status(after, job_id)
        received = after.staging.received_file(job_id, "result.txt")
    finally:
        await after.aclose()
    assert answer["job_directory_contents"]  # the listing that used to be believed
    assert not first.is_final, first
    assert final.status == "complete"
    assert received is not None and received.read_text() == "payload\n"
    assert (tmp_path / "runs").read_text() == "run\n"


# ---- a setup waiting in the broker while Pulsar answers "lost" (the broker-restart backlog) -------


async def test_a_job_whose_setup_waits_while_pulsar_answers_lost_completes_once(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    """The replica runs' PREEMPTED tasks after a broker stop/start (Pulsar not restarted): the
    reconcile's status requests were answered "lost" (no job directory) while the setups still waited
    for Pulsar's setup consumer; said twice, that was believed, and Pulsar then ran the jobs, once, to
    completion. Made to last here: this test holds the confirmed setup message (unacknowledged) while
    Pulsar answers several status requests, then hands it back to the queue."""
    service = Service(tmp_path, pulsar)
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    await pulsar.stop()
    backend = AmqpBackend(
        "default",
        pulsar.amqp_url,
        PulsarQueues.for_manager(amqp_key_prefix=pulsar.key_prefix),
        service.backend().staging,
        options=AmqpClientOptions(reconcile_after=0.5, sweep_interval=0.1),
        status_timeout=10,
    )
    holder = await aio_pika.connect(pulsar.amqp_url)
    try:
        await backend.prepare(spec)
        await backend.submit(spec)  # confirmed by the broker, waiting in Pulsar's setup queue
        channel = await holder.channel()
        queue = await channel.declare_queue(pulsar.queue_name("setup"), passive=True)
        held = await queue.get(no_ack=False, fail=True)
        assert held is not None
        await pulsar.start()
        # Several reconciles answered "lost" by the real Pulsar while the setup is held (or, as before
        # the fix, the task's status final after the second).
        asked = backend.client.stats.published["status"]

        async def asked_thrice_or_final() -> bool:
            if (await backend.status(job_id)).is_final:
                return True
            return backend.client.stats.published["status"] >= asked + 3

        await until(asked_thrice_or_final, "three status requests answered")
        await asyncio.sleep(1)  # the third answer in
        while_held = await backend.status(job_id)
        await channel.close()  # the setup goes back to the queue; Pulsar takes it in now
        final = await final_status(backend, job_id)
        received_file = backend.staging.received_file(job_id, "result.txt")
    finally:
        await holder.close()
        await backend.aclose()
    assert not while_held.is_final, while_held
    assert final.status == "complete"
    assert received_file is not None and received_file.read_text() == "payload\n"
    assert (tmp_path / "runs").read_text() == "run\n"


# ---- Pulsar killed while setting a job up (issue 12) ----------------------------------------------


def leave_half_set_up(pulsar: PulsarAmqp, job_id: str, launch_config: dict[str, object]) -> None:
    """What ``kill -9`` of Pulsar 0.16 leaves when it falls inside ``preprocess_and_launch``, after
    ``launch_config`` and ``submitted`` were written and before ``preprocessed`` and the active-jobs
    entry (the crash run's task 329a89d1): written with Pulsar's own JobDirectory. Racing a real
    kill into that window of milliseconds is not reproducible, so the test makes its result last."""
    from pulsar.managers.base import JobDirectory  # type: ignore[import-untyped]

    pulsar.staging_directory.mkdir(parents=True, exist_ok=True)  # a Pulsar that ran before
    directory = JobDirectory(str(pulsar.staging_directory), job_id)
    directory.setup()
    for name in ("inputs", "working", "outputs", "configs", "tool_files", "metadata"):
        directory.make_directory(name)
    directory.store_metadata("launch_config", launch_config)
    directory.store_metadata("submitted", "true")


def stall_backend(service: Service) -> AmqpBackend:
    """Reconciles often, a 2 s ``setup_stall_deadline`` (``pulsar.lost_job_deadline``) and 2 s
    ``setup_lost_after`` (the bound after the setup was sent once more)."""
    return AmqpBackend(
        "default",
        service.pulsar.amqp_url,
        PulsarQueues.for_manager(amqp_key_prefix=service.pulsar.key_prefix),
        service.backend().staging,
        options=AmqpClientOptions(reconcile_after=0.5, sweep_interval=0.1),
        status_timeout=10,
        setup_stall_deadline=2,
        setup_lost_after=2,
    )


async def kill_pulsar_setting_up(backend: AmqpBackend, pulsar: PulsarAmqp, spec: JobSpec) -> None:
    """Submit with Pulsar stopped, take the setup out of its queue as Pulsar's consumer would, leave
    what its death mid-setup leaves, and start Pulsar again."""
    await pulsar.stop()
    await backend.prepare(spec)
    await backend.submit(spec)  # confirmed by the broker, waiting in Pulsar's setup queue
    leave_half_set_up(pulsar, spec.job_id, await take_setup_as_pulsar(pulsar))
    await pulsar.start()


async def take_setup_as_pulsar(pulsar: PulsarAmqp) -> dict[str, Any]:
    """The next setup message, taken out of Pulsar's setup queue and acknowledged as Pulsar's
    consumer does before it dies setting the job up."""
    taker = await aio_pika.connect(pulsar.amqp_url)
    try:
        channel = await taker.channel()
        queue = await channel.declare_queue(pulsar.queue_name("setup"), passive=True)
        taken = await queue.get(no_ack=False, fail=True)
        assert taken is not None
        await taken.ack()
    finally:
        await taker.close()
    body: dict[str, Any] = json.loads(taken.body)
    return body


async def test_a_job_pulsar_was_killed_setting_up_is_set_up_again_and_runs_once(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    """Pulsar's consumer took the setup in, then Pulsar died mid-setup: after its restart Pulsar
    answers "preprocessing" for ever (its recovery resumes only jobs in its preprocessing index).
    Before the fix the task stayed INITIALIZING for ever; now, after ``setup_stall_deadline`` of
    "preprocessing" with no other update, the driver is asked to send the setup once more, which
    Pulsar (not a duplicate to it: neither final nor active) prepares and launches: one run."""
    job_id = str(uuid.uuid4())
    spec = counting_job(job_id, tmp_path)
    backend = stall_backend(Service(tmp_path, pulsar))
    try:
        await kill_pulsar_setting_up(backend, pulsar, spec)
        seen: list[str] = []

        async def asked_to_set_up_again() -> bool:
            status = await backend.status(job_id)
            seen.append(status.status)
            return bool(status.raw.get(RESUBMIT_KEY)) or status.is_final

        await until(asked_to_set_up_again, "the backend asks for the setup once more", timeout=30)
        again = await backend.status(job_id)
        await backend.submit(JobSpec(job_id=job_id, script_name="tes-job.sh", files=[]))  # as the driver does
        final = await final_status(backend, job_id)
        received = backend.staging.received_file(job_id, "result.txt")
    finally:
        await backend.aclose()
    assert "preprocessing" in seen  # what Pulsar answered after its restart
    assert not again.raw.get(RESUBMIT_KEY)  # asked once, not at every poll
    assert final.status == "complete", final
    assert received is not None and received.read_text() == "payload\n"
    assert (tmp_path / "runs").read_text() == "run\n"


async def test_a_job_still_setting_up_after_it_was_set_up_again_is_lost_saying_why(
    pulsar: PulsarAmqp, tmp_path: Path
) -> None:
    """The bound: if Pulsar still answers "preprocessing" ``setup_lost_after`` after the setup was sent once
    more (here: not sent, standing for a second setup Pulsar skipped), the job is lost (the driver
    ends the task PREEMPTED with the reason), never left non-final."""
    job_id = str(uuid.uuid4())
    backend = stall_backend(Service(tmp_path, pulsar))
    try:
        await kill_pulsar_setting_up(backend, pulsar, counting_job(job_id, tmp_path))
        statuses: list[JobStatus] = []

        async def final() -> bool:
            statuses.append(await backend.status(job_id))
            return statuses[-1].is_final

        await until(final, "the job final", timeout=30)
    finally:
        await backend.aclose()
    assert sum(bool(s.raw.get(RESUBMIT_KEY)) for s in statuses) == 1
    assert statuses[-1].status == "lost"
    assert statuses[-1].raw[LOST_REASON_KEY] == "Pulsar stopped while setting the job up; never started"
    assert not (tmp_path / "runs").exists()


async def test_a_task_whose_pulsar_died_setting_it_up_completes_saying_it_was_set_up_again(
    tmp_path: Path,
) -> None:
    """The crash run's INITIALIZING task, end to end (``tesp-api serve``, the driver): the task
    ends COMPLETE with its output, the re-setup stated in its system_logs."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "half.in").write_text("set up twice, run once\n")
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("h"))
    server = serve(
        tmp_path / "serve",
        pulsar,
        results,
        free_port(),
        TESP_API_PULSAR__LOST_JOB_DEADLINE="2",
        TESP_API_PULSAR__AMQP_RECONCILE_AFTER="1",
    )
    try:
        server.start()
        client = tes.HTTPClient(server.url, timeout=10)
        task_id = client.create_task(copy_task(results, "half"))  # Pulsar stopped: the setup waits
        await until(lambda: _has_setup(pulsar), "the setup message queued")
        body = await take_setup_as_pulsar(pulsar)
        leave_half_set_up(pulsar, str(body["job_id"]), body)
        await pulsar.start()
        done = await asyncio.to_thread(wait_state, client, task_id, FINAL, 120)
    finally:
        server.stop()
        await pulsar.stop()
        await pulsar.delete_queues()
    assert done.state == "COMPLETE", done.logs[0].system_logs
    assert any("its setup is sent once more" in line for line in done.logs[0].system_logs)
    assert (results / "half.out").read_text() == "set up twice, run once\n"
