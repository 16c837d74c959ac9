"""The remote-staging HTTP server Pulsar calls back in AMQP mode: signed per-job URLs, safe paths.
A real uvicorn server on 127.0.0.1 and a free port; requests made with httpx as Pulsar would make them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tesp_api.pulsar.amqp_staging import StagingServer, StagingTokens, safe_relative_path

JOB = "0b9c2a8e-1111-4222-8333-444455556666"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[StagingServer]:
    tokens = StagingTokens.from_key_file(tmp_path / "key", ttl=3600)
    staging = StagingServer(tmp_path / "received", tokens)
    await staging.start()
    yield staging
    await staging.stop()


async def test_registered_input_is_served_under_its_signed_url(server: StagingServer, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00payload")
    url = server.register_input(JOB, "tes-in-0", source)
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200 and response.content == b"\x00payload"


async def test_input_url_with_a_forged_token_is_refused(server: StagingServer, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"x")
    url = server.register_input(JOB, "tes-in-0", source)
    forged = url.rsplit(".", 1)[0] + "." + "0" * 64
    async with httpx.AsyncClient() as http:
        assert (await http.get(forged)).status_code == 403


async def test_a_token_for_one_input_does_not_open_another(server: StagingServer, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    url_a = server.register_input(JOB, "a", tmp_path / "a")
    server.register_input(JOB, "b", tmp_path / "b")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url_a.replace("/inputs/a?", "/inputs/b?"))).status_code == 403


async def test_output_upload_is_stored_under_the_job(server: StagingServer) -> None:
    endpoint = server.files_endpoint(JOB)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            endpoint + "&path=fs/out/dir/f.txt&file_type=output_workdir", files={"file": ("f", b"result")}
        )
    assert response.status_code == 200
    received = server.received_file(JOB, "fs/out/dir/f.txt")
    assert received is not None and received.read_bytes() == b"result"


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../../b", ""])
async def test_output_upload_outside_the_job_directory_is_refused(server: StagingServer, path: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            server.files_endpoint(JOB) + f"&path={path}&file_type=output", files={"file": ("f", b"x")}
        )
    assert response.status_code == 400
    assert not any(server.received_root.parent.glob("escape"))


async def test_output_token_of_another_job_is_refused(server: StagingServer) -> None:
    other = server.files_endpoint("another-job")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            other.replace("another-job", JOB) + "&path=x&file_type=output", files={"file": ("f", b"x")}
        )
    assert response.status_code == 403


def test_expired_token_is_refused(tmp_path: Path) -> None:
    tokens = StagingTokens(b"k" * 32, ttl=-1)
    assert not tokens.verify(tokens.sign("out", JOB), "out", JOB)


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    first = StagingTokens.from_key_file(tmp_path / "key", ttl=60)
    second = StagingTokens.from_key_file(tmp_path / "key", ttl=60)
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0
    assert second.verify(first.sign("out", JOB), "out", JOB)


@pytest.mark.parametrize("path", ["a/./b", "a//b", "a\\b", "..", "."])
def test_unsafe_relative_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValueError):
        safe_relative_path(path)
