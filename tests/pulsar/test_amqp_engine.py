"""The engine end to end with the AMQP backend: a real Pulsar in AMQP mode (``pulsar-main``, a plain
child process, no container engine here), the real RabbitMQ broker, the embedded store, executors under
bubblewrap (standing in for a container runtime: the image is ignored). Inputs reach Pulsar and outputs
come back only by remote staging through the backend's own HTTP staging server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.pulsar.amqp import AmqpBackend
from tesp_api.pulsar.retrying import unwrap
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.engine.test_engine import cancel, processes_with
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp, free_port, running_pulsar_amqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "e") as server:
        yield server


@pytest.fixture
def settings(pulsar: PulsarAmqp, tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "pulsar": {
                "url": None,
                "amqp_url": pulsar.amqp_url,
                "amqp_key_prefix": pulsar.key_prefix,
                "status": {"poll_interval": 0.2},
                "unreachable_deadline": 30,
                "client_timeout": 10,
            },
            "engine": {"work_dir": str(tmp_path / "work"), "claim_interval": 0.1, "lease_seconds": 5},
            "runtime": {"type": "bwrap"},
            "transfer": {"allowed_dirs": [str(tmp_path)]},
            "db": {"sqlite_path": str(tmp_path / "tasks.sqlite3")},
        }
    )


SCRIPT = "cat /in/inline.txt /in/by-url.txt > /out/both.txt && mkdir -p /out/dir/s && echo x > /out/dir/s/f && echo done"


def amqp_backend(engine: Engine) -> AmqpBackend:
    backend = unwrap(engine.backends["default"])  # the adapter under the retry policy
    assert isinstance(backend, AmqpBackend)
    return backend


async def test_task_with_inputs_and_outputs_completes_over_amqp(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    source = tmp_path / "source.txt"
    source.write_text("fetched by url\n")
    out_dir = tmp_path / "results"
    tid = await submit(
        store,
        {
            "inputs": [
                {"path": "/in/inline.txt", "content": "inline\n"},
                {"path": "/in/by-url.txt", "url": f"file://{source}"},
            ],
            "outputs": [
                {"path": "/out/both.txt", "url": f"file://{out_dir}/both.txt"},
                {"path": "/out/dir", "url": f"file://{out_dir}/dir", "type": "DIRECTORY"},
            ],
            "executors": [
                {
                    "image": "alpine",
                    "command": [
                        "sh",
                        "-c",
                        SCRIPT,
                    ],
                }
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert (out_dir / "both.txt").read_text() == "inline\nfetched by url\n"
    assert (out_dir / "dir/s/f").read_text() == "x\n"
    assert [lg.stdout for lg in rec.log.logs] == ["done\n"]


async def test_failing_executor_ends_in_executor_error_over_amqp(
    engine: Engine, store: SqliteTaskStore
) -> None:
    tid = await submit(store, {"executors": [{"image": "a", "command": ["sh", "-c", "exit 7"]}]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert [lg.exit_code for lg in rec.log.logs] == [7]


async def test_engine_asks_pulsar_nothing_while_updates_are_pushed(
    engine: Engine, store: SqliteTaskStore
) -> None:
    tid = await submit(store, {"executors": [{"image": "a", "command": ["sleep", "2"]}]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    # A fresh task needs no "already submitted?" check; everything else was pushed by Pulsar.
    assert amqp_backend(engine).client.stats.published["status"] == 0


async def test_cancel_of_a_running_task_kills_the_process_over_amqp(
    engine: Engine, store: SqliteTaskStore
) -> None:
    marker = f"299.{random.randint(10**8, 10**9)}"
    tid = await submit(store, {"executors": [{"image": "a", "command": ["sleep", marker]}]})
    await wait_for(store, tid, states={TesState.RUNNING}, inactive=False)
    for _ in range(300):
        if processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker), "the executor never started"
    await cancel(store, engine, tid)
    rec = await wait_for(store, tid)
    assert rec.state == TesState.CANCELED
    assert processes_with(marker) == []


async def test_the_staging_server_listens_once_the_engine_started_before_any_task(
    settings: Settings, store: SqliteTaskStore
) -> None:
    """Behind one staging URL for all replicas, a restarted replica must take in Pulsar's uploads of
    tasks another replica drives: its staging server cannot wait for its own engine's first AMQP task
    (tasks of a killed replica ended SYSTEM_ERROR while the balancer sent uploads to it)."""
    port = free_port()
    settings.pulsar.staging_listen = f"127.0.0.1:{port}"
    started = Engine(settings, store)
    await started.start()
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/pulsar-staging/healthz")
    finally:
        await started.stop()
    assert answer.status_code == 200
    assert answer.text.strip() == "ok"
    assert amqp_backend(started).client.stats.published["setup"] == 0  # no task was driven
