"""The Pulsar REST backend against a real pulsar-serve (one per module), with a private token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tesp_api.local import free_port
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobFile, JobSpec
from tesp_api.pulsar.rest import RestBackend
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = pytest.mark.pulsar
TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-rest"), private_token=TOKEN) as server:
        yield server


@pytest.fixture
async def client(pulsar: LocalPulsar) -> AsyncIterator[RestBackend]:
    c = RestBackend("p", pulsar.url, private_token=TOKEN, retries=1, backoff_base=0.05)
    yield c
    await c.aclose()


async def _wait_final(client: RestBackend, job_id: str) -> str:
    import asyncio

    for _ in range(300):
        st = await client.status(job_id)
        if st.is_final:
            return st.status
        await asyncio.sleep(0.05)
    raise AssertionError("job never ended")


async def test_a_job_is_prepared_submitted_fetched_and_cleaned(
    client: RestBackend, tmp_path: Path, pulsar: LocalPulsar
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    script = b'cp "$(dirname "$0")/../inputs/big.bin" result.bin; echo done\n'
    spec = JobSpec(
        "job-1", "s.sh", [JobFile("s.sh", "tool", data=script), JobFile("big.bin", "input", source=big)]
    )
    await client.prepare(spec)
    await client.prepare(spec)  # idempotent: a retried setup after a crash
    assert (await client.status("job-1")).status == "preprocessing"
    await client.submit(spec)
    assert await _wait_final(client, "job-1") == "complete"
    st = await client.status("job-1")
    assert st.returncode == 0 and st.stdout == "done\n"
    dest = tmp_path / "back" / "result.bin"
    assert await client.fetch("job-1", "result.bin", dest)
    assert dest.stat().st_size == big.stat().st_size
    assert not await client.fetch("job-1", "missing.bin", tmp_path / "m")
    await client.clean("job-1")
    assert (await client.status("job-1")).status == "lost"
    assert not (pulsar.staging_directory / "job-1").exists()


async def test_cancel_kills_a_running_job(client: RestBackend) -> None:
    spec = JobSpec("job-2", "s.sh", [JobFile("s.sh", "tool", data=b"sleep 60\n")])
    await client.prepare(spec)
    await client.submit(spec)
    await client.cancel("job-2")
    assert await _wait_final(client, "job-2") == "cancelled"
    await client.clean("job-2")


async def test_an_unknown_job_is_lost(client: RestBackend) -> None:
    assert (await client.status("never-seen")).status == "lost"


async def test_a_wrong_token_is_refused_without_retrying(pulsar: LocalPulsar) -> None:
    c = RestBackend("p", pulsar.url, private_token="wrong", retries=3)
    try:
        with pytest.raises(BackendError, match="401"):
            await c.status("x")
    finally:
        await c.aclose()


async def test_an_unreachable_server_raises_after_the_retries() -> None:
    c = RestBackend("p", f"http://127.0.0.1:{free_port()}", retries=2, backoff_base=0.01)
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await c.status("x")
    finally:
        await c.aclose()


async def test_the_token_never_reaches_the_log(client: RestBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # service.configure_logging quiets httpx below DEBUG
    await client.status("x")
    assert "HTTP Request" in caplog.text
    assert TOKEN not in caplog.text
