"""AMQP failover across hosts: a task whose worker dies is finished by another replica that has its own
work directory and shares only the task store and the staging directory (docs/amqp.md, "Several
replicas").

All real: the RabbitMQ broker, ``pulsar-main``, two ``tesp-api serve`` processes (each with its own
``engine.work_dir``, one SQLite store file, one ``pulsar.staging_dir``), killed with SIGKILL. Pulsar
reaches the replicas' staging servers only through a TCP load balancer (tests/services/tcp_balancer.py,
``pulsar.staging_url``), which sends each connection to any live replica. The dead replica's work
directory is deleted after the kill, as if it had been on another host: nothing of it is used.

Two windows: the job running in Pulsar (the other replica re-attaches by a status request, takes in
the outputs Pulsar uploads through the balancer and stores them), and the setup recorded but never
sent (made to last by a broker policy that refuses every publish to this test's setup queue: the
other replica sends the setup from the store record, and serves the staged input to Pulsar).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import tes

from tesp_api.local import free_port
from tests.engine.serve_process import ServeProcess
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp
from tests.services.tcp_balancer import TcpBalancer, running_balancer

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(240)]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


class Site:
    """What the replicas share (store, staging directory, broker, Pulsar, balancer) and the two of them."""

    def __init__(self, root: Path, pulsar: PulsarAmqp, balancer: TcpBalancer, ports: list[int]) -> None:
        self.root = root
        self.results = root / "results"
        self.results.mkdir()
        self.store_path = root / "shared" / "tasks.sqlite3"
        self.staging_dir = root / "shared" / "staging"
        self.store_path.parent.mkdir()
        self.pulsar = pulsar
        self.balancer = balancer
        self.ports = ports
        self.replicas = [self._replica(name, port) for name, port in zip(("a", "b"), ports, strict=True)]

    def _replica(self, name: str, staging_port: int) -> ServeProcess:
        home = self.root / name  # its own engine.work_dir (home/work), its own log
        home.mkdir()
        return ServeProcess(
            home,
            "",  # no REST url: AMQP mode
            TESP_API_DB__SQLITE_PATH=str(self.store_path),
            TESP_API_PULSAR__AMQP_URL=self.pulsar.amqp_url,
            TESP_API_PULSAR__AMQP_KEY_PREFIX=self.pulsar.key_prefix,
            TESP_API_PULSAR__STAGING_LISTEN=f"127.0.0.1:{staging_port}",
            TESP_API_PULSAR__STAGING_URL=self.balancer.url,  # Pulsar reaches any replica
            TESP_API_PULSAR__STAGING_DIR=str(self.staging_dir),
            TESP_API_PULSAR__CLIENT_TIMEOUT="3",
            TESP_API_ENGINE__LEASE_SECONDS="3",
            TESP_API_ENGINE__WORKER_ID=f"replica-{name}",
            TESP_API_TRANSFER__ALLOWED_DIRS=json.dumps([str(self.results)]),
        )

    def kill_as_host_loss(self, replica: ServeProcess) -> None:
        """kill -9, then its work directory goes too: the other replica must not need it."""
        replica.kill()
        shutil.rmtree(replica.workdir / "work", ignore_errors=True)

    def backend_data(self, task_id: str) -> dict[str, object]:
        """The task's engine-private record, read from the shared SQLite file (read-only)."""
        with sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute("SELECT backend_json FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def lease_owner(self, task_id: str) -> str | None:
        """The worker id holding the task's lease (read-only, from the shared SQLite file)."""
        with sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute("SELECT lease_owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


def copy_task(site: Site, seconds: int) -> tes.Task:
    """A URL input (staged, served to Pulsar by the staging servers) copied to an output after a sleep."""
    (site.results / "in.txt").write_text("payload from the first host\n")
    return tes.Task(
        inputs=[tes.Input(path="/data/in.txt", url=f"file://{site.results}/in.txt")],
        outputs=[tes.Output(path="/data/out.txt", url=f"file://{site.results}/out.txt")],
        executors=[
            tes.Executor(image="a", command=["sh", "-c", f"sleep {seconds}; cp /data/in.txt /data/out.txt"])
        ],
    )


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.2)


async def final_task(client: tes.HTTPClient, task_id: str, timeout: float = 150) -> tes.Task:
    async def final() -> bool:
        got = await asyncio.to_thread(client.get_task, task_id, "MINIMAL")
        return bool(got.state in FINAL)

    await until(final, f"task {task_id} final", timeout)
    return await asyncio.to_thread(client.get_task, task_id, "FULL")


def _ctl(*args: str) -> None:
    done = subprocess.run(
        [rabbitmq.RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


class SetupRefusal:
    """While entered (``active``) and not yet lifted, a broker policy refuses (nacks) every publish
    to ``pulsar``'s setup queue: a setup recorded in the store is never sent. Lifted at exit too."""

    def __init__(self, pulsar: PulsarAmqp, policy: str, *, active: bool = True) -> None:
        self.pattern = f"^{pulsar.queue_name('setup')}$"
        self.policy = policy
        self.active = active
        self.on = False

    def __enter__(self) -> SetupRefusal:
        if self.active:
            _ctl(
                "set_policy",
                "--apply-to",
                "queues",
                self.policy,
                self.pattern,
                '{"max-length":0,"overflow":"reject-publish"}',
            )
            self.on = True
        return self

    def lift(self) -> None:
        if self.on:
            _ctl("clear_policy", self.policy)
            self.on = False

    def __exit__(self, *exc: object) -> None:
        self.lift()


@contextlib.asynccontextmanager
async def site_running(site: Site) -> AsyncIterator[None]:
    """Pulsar started for the body; then the replicas stopped, Pulsar stopped and its queues deleted."""
    try:
        await site.pulsar.start()
        yield
    finally:
        site.stop()
        await site.pulsar.stop()
        await site.pulsar.delete_queues()


async def setup_recorded(site: Site, task_id: str) -> None:
    """Until the task's setup is in its store record and its submit has begun."""

    async def about_to_submit() -> bool:
        data = await asyncio.to_thread(site.backend_data, task_id)
        return bool(data.get("amqp_setup") and data.get("submitting"))

    await until(about_to_submit, "the setup recorded and the submit begun")


async def test_a_task_whose_worker_dies_while_the_job_runs_completes_on_another_host(tmp_path: Path) -> None:
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("fa"))
    ports = [free_port(), free_port()]
    with running_balancer([("127.0.0.1", p) for p in ports]) as balancer:
        site = Site(tmp_path, pulsar, balancer, ports)
        first, second = site.replicas
        async with site_running(site):
            first.start()
            task_id = tes.HTTPClient(first.url, timeout=10).create_task(copy_task(site, 15))
            await until(lambda: asyncio.to_thread(pulsar.job_ids_with_pid_files), "the job running in Pulsar")
            second.start()
            site.kill_as_host_loss(first)
            done = await final_task(tes.HTTPClient(second.url, timeout=10), task_id)
        routed = dict(balancer.routed)
    assert done.state == "COMPLETE", done.logs[0].system_logs
    assert (site.results / "out.txt").read_text() == "payload from the first host\n"
    assert routed[ports[0]] >= 1  # Pulsar fetched the input from the first replica
    assert routed[ports[1]] >= 1  # and uploaded the outputs to the second, through the balancer
    received = [k for k in site.backend_data(task_id) if k.startswith("amqp_received_by:")]
    assert received == [f"amqp_received_by:{socket.gethostname()}:{site.staging_dir / 'default'}"]


async def test_a_setup_recorded_but_never_sent_is_sent_by_another_host_which_serves_its_input(
    tmp_path: Path,
) -> None:
    pulsar = PulsarAmqp(tmp_path / "pulsar", key_prefix=rabbitmq.unique_prefix("fb"))
    ports = [free_port(), free_port()]
    with running_balancer([("127.0.0.1", p) for p in ports]) as balancer:
        site = Site(tmp_path, pulsar, balancer, ports)
        first, second = site.replicas
        async with site_running(site):
            # Every publish to this test's setup queue is refused (nacked): the setup is never sent.
            with SetupRefusal(pulsar, f"tesp-test-{pulsar.key_prefix}") as refusal:
                first.start()
                task_id = tes.HTTPClient(first.url, timeout=10).create_task(copy_task(site, 1))
                await setup_recorded(site, task_id)
                site.kill_as_host_loss(first)
                refusal.lift()
            setup = site.backend_data(task_id)["amqp_setup"]
            second.start()
            done = await final_task(tes.HTTPClient(second.url, timeout=10), task_id)
        routed = dict(balancer.routed)
    assert done.state == "COMPLETE", done.logs[0].system_logs
    assert (site.results / "out.txt").read_text() == "payload from the first host\n"
    assert isinstance(setup, dict) and setup["sent"] is False
    assert routed[ports[0]] == 0  # the first replica never talked to Pulsar
    assert routed[ports[1]] >= 2  # the second served the input and took in the outputs
    assert site.backend_data(task_id)["amqp_setup"]["sent"] is True  # type: ignore[index]
