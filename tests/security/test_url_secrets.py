"""Credentials inside input/output URLs never come back: not in a view, a log line or a system log.

A submitter's URLs may carry passwords (``user:pass@``) and signatures (S3/GCS/Azure signed URLs,
``?token=``). Views mask them at rendering; the stored record keeps the originals, because the
engine needs them for the transfer. Everything here is real: the API in-process over a real SQLite
store, the TransferMux against a real HTTP server, and the engine against a real Pulsar.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings, TransferSettings
from tesp_api.engine import Engine
from tesp_api.local import free_port
from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.masking import SECRET_PARAMETERS, mask_text, mask_url
from tesp_api.tes.models import TesOutputFileLog, TesState
from tesp_api.transfer import egress
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.mux import TransferMux
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.security.victim_server import VictimServer, victim_server
from tests.services.pulsar import LocalPulsar, pulsar_server

BASE = "/ga4gh/tes/v1"
SECRETS = [
    "pa55w0rd-in-userinfo",
    "SIGV4SIGNATURESECRET",
    "AKIACREDENTIALSECRET",
    "SESSIONTOKENSECRET",
    "AZURESIGSECRET",
    "FTPPASSWORDSECRET",
    "BEARERTOKENSECRET",
    "GOOGSIGNATURESECRET",
    "bare-token-user",
]
SIGNED = (
    "https://alice:pa55w0rd-in-userinfo@data.example.org/in/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIACREDENTIALSECRET%2F20260101&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Security-Token=SESSIONTOKENSECRET&X-Amz-Signature=SIGV4SIGNATURESECRET"
)
AZURE = "https://acct.blob.example.org/c/out.txt?sv=2024-01-01&se=2026-12-31&sp=rw&sig=AZURESIGSECRET"
FTP = "ftp://bob:FTPPASSWORDSECRET@ftp.example.org/results/out.txt"
TOKEN_USER = "https://bare-token-user@git.example.org/repo/file?access_token=BEARERTOKENSECRET"
GCS = "https://storage.example.org/b/o?X-Goog-Signature=GOOGSIGNATURESECRET&X-Goog-Date=20260101"


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"leaked {leaked} in {text[:2000]}"


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example hosts resolve to a public address (never contacted: no transfer runs here)."""

    async def resolve(host: str, port: int, timeout: float) -> list[str]:
        return ["93.184.216.34"]

    monkeypatch.setattr(egress, "resolve", resolve)


@pytest.fixture
def app(store: SqliteTaskStore) -> FastAPI:
    return create_app(Settings(), store)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


async def created_with_secrets(client: httpx.AsyncClient, store: SqliteTaskStore) -> str:
    body: dict[str, Any] = {
        "name": "secrets",
        "executors": [{"image": "alpine", "command": ["true"]}],
        "inputs": [
            {"url": SIGNED, "path": "/data/a.txt"},
            {"url": TOKEN_USER, "path": "/data/b.txt"},
            {"url": GCS, "path": "/data/c.txt"},
        ],
        "outputs": [{"url": AZURE, "path": "/data/out.txt"}, {"url": FTP, "path": "/data/out2.txt"}],
    }
    response = await client.post(f"{BASE}/tasks", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    await store.update(
        task_id,
        log=LogPatch(
            outputs=[
                TesOutputFileLog(url=AZURE, path="/data/out.txt", size_bytes="3"),
                TesOutputFileLog(url=FTP, path="/data/out2.txt", size_bytes="3"),
            ],
            system_logs=[f"outputs[0] (/data/out.txt): upload of {AZURE} failed: server answered HTTP 500"],
        ),
    )
    return task_id


@pytest.mark.parametrize("view", ["BASIC", "FULL"])
async def test_a_task_view_shows_no_url_credential(
    client: httpx.AsyncClient, store: SqliteTaskStore, view: str
) -> None:
    task_id = await created_with_secrets(client, store)
    response = await client.get(f"{BASE}/tasks/{task_id}", params={"view": view})
    assert response.status_code == 200
    assert_no_secret(response.text)
    task = response.json()
    assert task["inputs"][0]["url"].startswith("https://***@data.example.org/in/a.txt?")
    assert "X-Amz-Date=20260101T000000Z" in task["inputs"][0]["url"]  # the rest stays recognisable
    assert task["outputs"][0]["url"].endswith("se=2026-12-31&sp=rw&sig=***")
    assert task["logs"][0]["outputs"][1]["url"] == "ftp://***@ftp.example.org/results/out.txt"


@pytest.mark.parametrize("view", ["BASIC", "FULL"])
async def test_the_list_view_shows_no_url_credential(
    client: httpx.AsyncClient, store: SqliteTaskStore, view: str
) -> None:
    await created_with_secrets(client, store)
    response = await client.get(f"{BASE}/tasks", params={"view": view})
    assert response.status_code == 200 and response.json()["tasks"]
    assert_no_secret(response.text)


async def test_the_stored_task_keeps_the_original_urls_for_the_engine(
    client: httpx.AsyncClient, store: SqliteTaskStore
) -> None:
    task_id = await created_with_secrets(client, store)
    record = await store.get(task_id)
    assert record is not None and record.task.inputs and record.task.outputs
    assert record.task.inputs[0].url == SIGNED
    assert record.task.outputs[1].url == FTP


async def test_a_refused_url_is_not_quoted_with_its_credentials(client: httpx.AsyncClient) -> None:
    body = {
        "executors": [{"image": "alpine", "command": ["true"]}],
        "inputs": [{"url": SIGNED.replace("data.example.org", "127.0.0.1"), "path": "/data/a"}],
    }
    response = await client.post(f"{BASE}/tasks", json=body)
    assert response.status_code == 400
    assert_no_secret(response.text)


@pytest.mark.parametrize(
    "name", [*sorted(SECRET_PARAMETERS), "X-Ms-Signature", "upload_token", "X%2DAmz%2DSignature"]
)
def test_every_listed_credential_parameter_is_masked(name: str) -> None:
    assert mask_url(f"https://h/p?keep=1&{name}=VALUE123") == f"https://h/p?keep=1&{name}=***"


def test_a_url_inside_a_system_log_line_is_masked() -> None:
    assert (
        mask_text(f"download of {FTP} failed")
        == "download of ftp://***@ftp.example.org/results/out.txt failed"
    )


# --- logs of real transfers -------------------------------------------------------------------


@pytest.fixture
def data_server(tmp_path: Path) -> Iterator[VictimServer]:
    with victim_server(tmp_path) as server:
        yield server


def loopback_mux() -> TransferMux:
    return TransferMux(TransferSettings.model_validate({"allowed_hosts": ["127.0.0.1"], "retries": 0}))


async def test_a_successful_transfer_logs_no_credential(
    data_server: VictimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs every request's full URL; the service's filter takes the secrets out."""
    caplog.set_level(logging.DEBUG)
    url = data_server.url.replace("://", "://alice:pa55w0rd-in-userinfo@") + SIGNED.split("a.txt", 1)[1]
    mux = loopback_mux()
    try:
        await mux.download(url, tmp_path / "in")
    finally:
        await mux.aclose()
    assert data_server.hits()  # it really ran
    assert caplog.records
    assert_no_secret(caplog.text)


async def test_a_failed_transfer_names_the_url_without_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    mux = TransferMux(
        TransferSettings.model_validate({"allowed_hosts": ["127.0.0.1"], "retries": 1, "retry_backoff": 0})
    )
    try:
        for url in (
            f"http://alice:pa55w0rd-in-userinfo@127.0.0.1:{closed}/x?X-Amz-Signature=SIGV4SIGNATURESECRET",
            f"ftp://bob:FTPPASSWORDSECRET@127.0.0.1:{closed}/x",
        ):
            with pytest.raises(TransferError) as caught:
                await mux.download(url, tmp_path / "in")
            assert_no_secret(str(caught.value))
    finally:
        await mux.aclose()
    assert_no_secret(caplog.text)


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar")) as server:
        yield server


async def test_a_task_whose_transfer_fails_has_no_credential_in_system_logs_or_the_service_log(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    settings = engine_settings(pulsar.url, tmp_path)
    settings = settings.model_copy(update={"transfer": settings.transfer.model_copy(update={"retries": 0})})
    url = f"http://alice:pa55w0rd-in-userinfo@127.0.0.1:{closed}/in?X-Amz-Signature=SIGV4SIGNATURESECRET"
    task_id = await submit(
        store,
        {
            "executors": [{"image": "alpine", "command": ["true"]}],
            "inputs": [{"url": url, "path": "/data/in"}],
        },
    )
    engine = Engine(settings, store)
    await engine.start()
    try:
        record = await wait_for(store, task_id)
    finally:
        await engine.stop()
    assert record.state == TesState.SYSTEM_ERROR
    assert record.log.system_logs and any("127.0.0.1" in line for line in record.log.system_logs)
    assert_no_secret("\n".join(record.log.system_logs))
    assert_no_secret(caplog.text)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, store)), base_url="http://tes.test"
    ) as client:
        view = await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})
    assert view.status_code == 200 and "***" in view.text
    assert_no_secret(view.text)
