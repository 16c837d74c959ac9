"""Shared fixtures for the deployment checks (no Docker engine on the build machines)."""

from __future__ import annotations

import shutil

import pytest

# Values for the variables the compose files require; the checks never use real secrets.
MAIN_ENV = {
    "MONGO_INITDB_ROOT_USERNAME": "tesp",
    "MONGO_INITDB_ROOT_PASSWORD": "0123456789abcdef",
    "PULSAR_PRIVATE_TOKEN": "fedcba9876543210",
}
DTS_ENV = {
    "DTS_S3_ACCESS_KEY": "dts-access",
    "DTS_S3_SECRET_KEY": "dts-secret-0123",
    "DTS_FTP_USER": "tesp",
    "DTS_FTP_PASSWORD": "ftp-secret",
    "DTS_HTTP_TOKEN": "http-secret",
}


@pytest.fixture
def docker_compose_v1() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose (Debian's v1) is not installed: apt-get install docker-compose")
    return path
