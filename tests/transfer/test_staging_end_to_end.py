"""Staging end to end: a real Pulsar (REST), the real engine and store, real S3/FTP/HTTP servers.

Inputs are fetched by this service through the TransferMux and uploaded to Pulsar; outputs are
fetched back from Pulsar and uploaded to their URLs. Executors run under bubblewrap (there is no
Docker engine on the build machines; the image name is ignored).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.services.ftp_server import FtpServer
from tests.services.http_server import HttpServer
from tests.services.pulsar import LocalPulsar, pulsar_server
from tests.services.s3_server import S3Server
from tests.transfer.conftest import BUCKET, make_settings

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar"), num_concurrent_jobs=4) as server:
        yield server


@pytest.fixture
def settings(pulsar: LocalPulsar, tmp_path: Path, s3: S3Server, ftp: FtpServer, http: HttpServer) -> Settings:
    base = engine_settings(pulsar.url, tmp_path)
    transfer = make_settings(allowed_dir=tmp_path, s3=s3, ftp=ftp, http=http, retries=0)
    return base.model_copy(update={"transfer": transfer})


def prefix() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


def s3_text(s3: S3Server, key: str) -> str:
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def task(command: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "outputs": outputs,
        "executors": [{"image": "a", "command": ["sh", "-c", command]}],
    }


async def test_inputs_from_s3_ftp_and_http_reach_the_executor_and_outputs_go_back_out(
    engine: Engine, store: SqliteTaskStore, s3: S3Server, ftp: FtpServer, http: HttpServer
) -> None:
    p = prefix()
    s3.client().put_object(Bucket=BUCKET, Key=f"{p}/a.txt", Body=b"s3\n")
    (ftp.root / p).mkdir()
    (ftp.root / p / "b.txt").write_text("ftp\n")
    (http.root / "private" / p).mkdir(parents=True)
    (http.root / "private" / p / "c.txt").write_text("http\n")
    tid = await submit(
        store,
        task(
            "cat /in/a.txt /in/b.txt /in/c.txt > /out/all.txt && cp /out/all.txt /out/copy.txt",
            [
                {"path": "/in/a.txt", "url": f"s3://{BUCKET}/{p}/a.txt"},
                {"path": "/in/b.txt", "url": ftp.url(f"{p}/b.txt", with_login=False)},
                {"path": "/in/c.txt", "url": f"{http.base_url}/private/{p}/c.txt"},
            ],
            [
                {"path": "/out/all.txt", "url": f"s3://{BUCKET}/{p}/out/all.txt"},
                {"path": "/out/copy.txt", "url": ftp.url(f"{p}/out/copy.txt", with_login=False)},
                {"path": "/out/all.txt", "url": f"{http.base_url}/private/{p}/out/all.txt"},
            ],
        ),
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert s3_text(s3, f"{p}/out/all.txt") == "s3\nftp\nhttp\n"
    assert (ftp.root / p / "out" / "copy.txt").read_text() == "s3\nftp\nhttp\n"
    assert (http.root / "private" / p / "out" / "all.txt").read_text() == "s3\nftp\nhttp\n"
    assert [o.size_bytes for o in rec.log.outputs] == ["12", "12", "12"]


async def test_s3_prefix_input_arrives_as_a_directory(
    engine: Engine, store: SqliteTaskStore, s3: S3Server
) -> None:
    p = prefix()
    for key in ("d/x.txt", "d/sub/y.txt"):
        s3.client().put_object(Bucket=BUCKET, Key=f"{p}/{key}", Body=key.encode())
    tid = await submit(
        store,
        task(
            "cd /in/d && find . -type f | sort > /out/list.txt",
            [{"path": "/in/d", "url": f"s3://{BUCKET}/{p}/d", "type": "DIRECTORY"}],
            [{"path": "/out/list.txt", "url": f"s3://{BUCKET}/{p}/list.txt"}],
        ),
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert s3_text(s3, f"{p}/list.txt") == "./sub/y.txt\n./x.txt\n"


async def test_wildcard_output_without_prefix_is_uploaded_below_the_url(
    engine: Engine, store: SqliteTaskStore, s3: S3Server
) -> None:
    p = prefix()
    tid = await submit(
        store,
        task(
            "mkdir -p /out/r && echo 1 > /out/r/one.txt && echo 2 > /out/r/two.txt && echo n > /out/r/no.csv",
            [],
            [{"path": "/out/r/*.txt", "url": f"s3://{BUCKET}/{p}/glob"}],
        ),
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert sorted(o.url for o in rec.log.outputs) == [
        f"s3://{BUCKET}/{p}/glob/one.txt",
        f"s3://{BUCKET}/{p}/glob/two.txt",
    ]
    assert s3_text(s3, f"{p}/glob/two.txt") == "2\n"


async def test_outputs_are_uploaded_even_when_the_executor_fails(
    engine: Engine, store: SqliteTaskStore, s3: S3Server
) -> None:
    p = prefix()
    tid = await submit(
        store,
        task(
            "echo 3 > /out/.exitcode; exit 3",
            [],
            [{"path": "/out/.exitcode", "url": f"s3://{BUCKET}/{p}/.exitcode"}],
        ),
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert s3_text(s3, f"{p}/.exitcode") == "3\n"


async def test_a_missing_declared_output_is_noted_and_the_task_still_completes(
    engine: Engine, store: SqliteTaskStore, s3: S3Server
) -> None:
    p = prefix()
    tid = await submit(
        store, task("true", [], [{"path": "/out/never.txt", "url": f"s3://{BUCKET}/{p}/never.txt"}])
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE
    assert any("/out/never.txt" in line and "not found" in line for line in rec.log.system_logs or [])


async def test_input_failure_ends_in_system_error_with_a_redacted_reason(
    engine: Engine, store: SqliteTaskStore, http: HttpServer
) -> None:
    url = f"{http.base_url}/{prefix()}/absent.txt?X-Amz-Signature=S1GNED"
    tid = await submit(store, task("true", [{"path": "/in/x", "url": url}], []))
    rec = await wait_for(store, tid)
    assert rec.state == TesState.SYSTEM_ERROR
    lines = "\n".join(rec.log.system_logs or [])
    assert "not found (HTTP 404)" in lines and url.split("?")[0] in lines
    assert "S1GNED" not in lines


async def test_output_failure_ends_in_system_error_without_leaking_the_password(
    engine: Engine, store: SqliteTaskStore, ftp: FtpServer
) -> None:
    url = f"ftp://{ftp.user}:Wr0ngPw@{ftp.host}:{ftp.port}/{prefix()}/o.txt"
    tid = await submit(store, task("echo x > /out/o.txt", [], [{"path": "/out/o.txt", "url": url}]))
    rec = await wait_for(store, tid)
    assert rec.state == TesState.SYSTEM_ERROR
    lines = "\n".join(rec.log.system_logs or [])
    assert "login refused" in lines and "Wr0ngPw" not in lines
