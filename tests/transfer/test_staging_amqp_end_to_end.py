"""Staging end to end in AMQP mode: a real Pulsar (pulsar-main) behind the real RabbitMQ broker.

Pulsar cannot receive files over AMQP: this service fetches the inputs through the TransferMux,
Pulsar pulls them from the backend's staging server, pushes the outputs back to it, and this service
uploads them to their URLs. Executors run under bubblewrap (no Docker engine on the build machines).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.services import rabbitmq
from tests.services.ftp_server import FtpServer
from tests.services.pulsar_amqp import PulsarAmqp, running_pulsar_amqp
from tests.services.s3_server import S3Server
from tests.transfer.conftest import BUCKET, make_settings

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _broker() -> None:
    rabbitmq.require_broker()


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "tr") as server:
        yield server


@pytest.fixture
async def engine(pulsar: PulsarAmqp, tmp_path: Path, s3: S3Server, ftp: FtpServer) -> AsyncIterator[Engine]:
    settings = Settings.model_validate(
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
            "db": {"sqlite_path": str(tmp_path / "tasks.sqlite3")},
        }
    )
    settings = settings.model_copy(update={"transfer": make_settings(s3=s3, ftp=ftp, retries=0)})
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    e = Engine(settings, store)
    await e.start()
    try:
        yield e
    finally:
        await e.stop()
        await store.close()


async def test_remote_inputs_and_outputs_move_through_amqp_staging_even_after_a_failure(
    engine: Engine, s3: S3Server, ftp: FtpServer
) -> None:
    p = f"amqp-{uuid.uuid4().hex[:8]}"
    s3.client().put_object(Bucket=BUCKET, Key=f"{p}/in.txt", Body=b"from s3\n")
    (ftp.root / p).mkdir()
    (ftp.root / p / "in2.txt").write_text("from ftp\n")
    tid = await submit(
        engine.store,
        {
            "inputs": [
                {"path": "/in/a.txt", "url": f"s3://{BUCKET}/{p}/in.txt"},
                {"path": "/in/b.txt", "url": ftp.url(f"{p}/in2.txt", with_login=False)},
            ],
            "outputs": [
                {"path": "/out/both.txt", "url": f"s3://{BUCKET}/{p}/both.txt"},
                {"path": "/out/both.txt", "url": ftp.url(f"{p}/out/both.txt", with_login=False)},
            ],
            "executors": [
                {"image": "a", "command": ["sh", "-c", "cat /in/a.txt /in/b.txt > /out/both.txt; exit 2"]}
            ],
        },
    )
    rec = await wait_for(engine.store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR, rec.log.system_logs
    got = s3.client().get_object(Bucket=BUCKET, Key=f"{p}/both.txt")["Body"].read()
    assert got == b"from s3\nfrom ftp\n"
    assert (ftp.root / p / "out" / "both.txt").read_bytes() == got
    assert [o.size_bytes for o in rec.log.outputs] == ["17", "17"]
