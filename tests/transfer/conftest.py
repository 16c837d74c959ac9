"""Real servers for the transfer tests, started once per session on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tesp_api.config.settings import FtpCredential, HttpCredential, S3Credential, TransferSettings
from tests.services.egress import LOOPBACK_TRANSFER
from tests.services.ftp_server import FtpServer, ftp_server
from tests.services.http_server import HttpServer, http_server
from tests.services.s3_server import S3Server, s3_server

BUCKET = "tes-data"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="session")
def ftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    with ftp_server(tmp_path_factory.mktemp("ftp-root")) as server:
        yield server


@pytest.fixture(scope="session")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with http_server(tmp_path_factory.mktemp("http-root")) as server:
        yield server


@pytest.fixture
def allowed_dir(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def make_settings(
    *,
    allowed_dir: Path | None = None,
    s3: S3Server | None = None,
    ftp: FtpServer | None = None,
    http: HttpServer | None = None,
    **overrides: object,
) -> TransferSettings:
    """Settings as an operator would write them, with fast retries so failure tests stay quick."""
    values: dict[str, object] = {
        "allowed_dirs": [str(allowed_dir)] if allowed_dir else [],
        "retries": 2,
        "retry_backoff": 0.01,
        "timeout": 10.0,
        "chunk_bytes": 64 * 1024,
        **LOOPBACK_TRANSFER,  # the test servers listen on 127.0.0.1, which the SSRF guard refuses
    }
    if s3 is not None:
        values["s3"] = [
            S3Credential(
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                access_key_id=s3.access_key,
                secret_access_key=s3.secret_key,
            )
        ]
    if ftp is not None:
        values["ftp"] = [
            FtpCredential(host=f"{ftp.host}:{ftp.port}", username=ftp.user, password=ftp.password)
        ]
    if http is not None:
        values["http"] = [HttpCredential(host=http.host, bearer_token=http.token)]
    values.update(overrides)
    return TransferSettings.model_validate(values)
