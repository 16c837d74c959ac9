"""The Pulsar REST backend over a Unix socket (``pulsar.uds``), against a real pulsar-serve bound with
gunicorn's ``unix:`` address and a private token: a whole job goes through the socket, and the token
stays out of the log lines even at DEBUG (httpx logs every request URL there)."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine.engine import build_backends
from tesp_api.local import LocalPulsar, new_private_token
from tesp_api.pulsar.port import BackendError, JobFile, JobSpec
from tesp_api.pulsar.rest import RestBackend
from tesp_api.pulsar.retrying import unwrap

pytestmark = pytest.mark.pulsar


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    server = LocalPulsar(
        tmp_path_factory.mktemp("pulsar-uds"), private_token=new_private_token(), unix_socket=True
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=3.0)


@pytest.fixture
async def client(pulsar: LocalPulsar) -> AsyncIterator[RestBackend]:
    backend = build_backends(
        Settings.model_validate(
            {
                "pulsar": {
                    "url": pulsar.url,
                    "uds": pulsar.uds,
                    "private_token": pulsar.private_token,
                    "retries": 1,
                },
            }
        )
    )["default"]
    backend = unwrap(backend)  # the adapter under the retry policy
    assert isinstance(backend, RestBackend)
    yield backend
    await backend.aclose()


async def test_a_job_runs_through_the_socket(client: RestBackend, pulsar: LocalPulsar) -> None:
    assert client.uds == pulsar.uds and pulsar.uds is not None
    assert stat.S_ISSOCK(Path(pulsar.uds).stat().st_mode)
    spec = JobSpec("uds-1", "s.sh", [JobFile("s.sh", "tool", data=b"echo over the socket\n")])
    await client.prepare(spec)
    await client.submit(spec)
    for _ in range(600):
        status = await client.status("uds-1")
        if status.is_final:
            break
        await asyncio.sleep(0.05)
    assert status.status == "complete" and status.stdout == "over the socket\n"
    await client.clean("uds-1")


async def test_the_socket_still_wants_the_token(pulsar: LocalPulsar) -> None:
    tokenless = RestBackend("p", pulsar.url, uds=pulsar.uds, retries=0)
    try:
        with pytest.raises(BackendError, match="HTTP 401"):
            await tokenless.setup("uds-intruder")
    finally:
        await tokenless.aclose()
    assert not (pulsar.staging_directory / "uds-intruder").exists()


async def test_the_token_is_redacted_from_httpx_debug_lines(
    client: RestBackend, pulsar: LocalPulsar, caplog: pytest.LogCaptureFixture
) -> None:
    assert pulsar.private_token
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        await client.healthz()
    # The line is logged, with the token replaced (private_token=***, or the whole query as ?*** once the
    # transfer layer's URL redaction is installed on the same httpx logger): never the token itself.
    assert "GET http://localhost/healthz?" in caplog.text
    assert "private_token=***" in caplog.text or "healthz?***" in caplog.text
    assert pulsar.private_token not in caplog.text
