"""The Pulsar REST backend against a real pulsar-serve (one per module), with a private token.

The backend makes one attempt per call and classifies the failure (retrying.py retries): no
answer or 5xx -> BackendUnavailable, 4xx -> BackendError, a missing file -> False. Faults come
from a real proxy in front of the real Pulsar (tests/services/faulty_proxy.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tesp_api.local import free_port
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobFile, JobSpec
from tesp_api.pulsar.rest import RestBackend
from tests.services.faulty_proxy import faulty_proxy
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = pytest.mark.pulsar
TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-rest"), private_token=TOKEN) as server:
        yield server


@pytest.fixture
async def client(pulsar: LocalPulsar) -> AsyncIterator[RestBackend]:
    c = RestBackend("p", pulsar.url, private_token=TOKEN)
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


async def test_a_wrong_token_is_a_refusal_naming_the_token(pulsar: LocalPulsar) -> None:
    c = RestBackend("p", pulsar.url, private_token="wrong")
    try:
        with pytest.raises(BackendError, match="401: Pulsar refused the private token"):
            await c.status("x")
        with pytest.raises(BackendError, match="401: Pulsar refused the private token"):
            await c.fetch("x", "out.txt", Path("/nonexistent/never-written"))  # not "file missing"
    finally:
        await c.aclose()


async def test_an_unreachable_server_is_unavailable() -> None:
    c = RestBackend("p", f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await c.status("x")
    finally:
        await c.aclose()


async def test_a_5xx_answer_is_unavailable_on_every_call_and_never_a_missing_file(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    """Before: fetch answered False ("file missing") to a 503, and the task failed for good."""
    with faulty_proxy(pulsar.url, share=1.0, kinds=("503",)) as proxy:
        c = RestBackend("p", proxy.url, private_token=TOKEN)
        try:
            with pytest.raises(BackendUnavailable, match="HTTP 503"):
                await c.fetch("job-x", "out.txt", tmp_path / "out.txt")
            with pytest.raises(BackendUnavailable, match="HTTP 503"):
                await c.status("job-x")
            with pytest.raises(BackendUnavailable, match="HTTP 503"):
                await c.prepare(JobSpec("job-x", "s.sh", [JobFile("s.sh", "tool", data=b"true\n")]))
        finally:
            await c.aclose()
        assert not (tmp_path / "out.txt").exists()


async def test_a_dropped_connection_is_unavailable(pulsar: LocalPulsar, tmp_path: Path) -> None:
    with faulty_proxy(pulsar.url, share=1.0, kinds=("drop",)) as proxy:
        c = RestBackend("p", proxy.url, private_token=TOKEN)
        try:
            with pytest.raises(BackendUnavailable, match="unreachable"):
                await c.status("job-x")
            with pytest.raises(BackendUnavailable, match="unreachable"):
                await c.fetch("job-x", "out.txt", tmp_path / "out.txt")
        finally:
            await c.aclose()


async def test_a_file_pulsar_does_not_have_is_missing_not_unavailable(
    client: RestBackend, tmp_path: Path
) -> None:
    """Pulsar answers a missing file (or an unknown job) with a bare HTTP 500: that is False."""
    await client.prepare(JobSpec("job-3", "s.sh", [JobFile("s.sh", "tool", data=b"true\n")]))
    assert not await client.fetch("job-3", "never-made.txt", tmp_path / "m")
    assert not await client.fetch("job-never-seen", "x.txt", tmp_path / "m")
    assert not (tmp_path / "m").exists()
    await client.clean("job-3")


async def test_the_token_never_reaches_the_log(client: RestBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # service.configure_logging quiets httpx below DEBUG
    await client.status("x")
    assert "HTTP Request" in caplog.text
    assert TOKEN not in caplog.text


async def test_a_download_is_written_from_worker_threads_never_the_event_loop(
    client: RestBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk must not stall every task: the .part file is opened, written and renamed in
    threads. (A spy on Path.open records the threads; Pulsar and the download are real.)"""
    import threading

    spec = JobSpec("job-4", "s.sh", [JobFile("s.sh", "tool", data=b"head -c 3000000 /dev/zero > out.bin\n")])
    await client.prepare(spec)
    await client.submit(spec)
    assert await _wait_final(client, "job-4") == "complete"
    loop_thread = threading.current_thread()
    writers: list[threading.Thread] = []
    real_open = Path.open

    class SpyFile:
        def __init__(self, fh: Any) -> None:
            self._fh = fh

        def write(self, data: bytes) -> int:
            writers.append(threading.current_thread())
            return int(self._fh.write(data))

        def close(self) -> None:
            writers.append(threading.current_thread())
            self._fh.close()

    def spy_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        writers.append(threading.current_thread())
        fh = real_open(self, *args, **kwargs)
        return SpyFile(fh) if self.name.endswith(".part") else fh

    monkeypatch.setattr(Path, "open", spy_open)
    dest = tmp_path / "back" / "out.bin"
    assert await client.fetch("job-4", "out.bin", dest)
    monkeypatch.undo()
    assert dest.stat().st_size == 3000000
    assert len(writers) > 3 and loop_thread not in writers
    await client.clean("job-4")
