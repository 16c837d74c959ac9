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


# ---- several replicas: one key, one staging directory --------------------------------------------


async def replica(root: Path, key: bytes) -> StagingServer:
    staging = StagingServer(root, StagingTokens(key, ttl=3600))
    await staging.start()
    return staging


async def test_an_input_staged_by_one_replica_is_served_by_another_with_the_same_key(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"staged once")
    first, second = (
        await replica(tmp_path / "shared", b"s" * 32),
        await replica(tmp_path / "shared", b"s" * 32),
    )
    try:
        url = first.register_input(JOB, "tes-in-0", source)
        source.unlink()  # the first replica's own copy is gone (its host died)
        async with httpx.AsyncClient() as http:
            response = await http.get(url.replace(first.base_url, second.base_url))
    finally:
        await first.stop()
        await second.stop()
    assert response.status_code == 200 and response.content == b"staged once"


async def test_an_upload_taken_in_by_one_replica_is_read_by_another(tmp_path: Path) -> None:
    first, second = (
        await replica(tmp_path / "shared", b"s" * 32),
        await replica(tmp_path / "shared", b"s" * 32),
    )
    reported: list[tuple[str, str]] = []

    async def on_received(job_id: str, path: str) -> None:
        reported.append((job_id, path))

    first.on_received = on_received
    try:
        async with httpx.AsyncClient() as http:
            for name in ("tes-meta.tar", "tes-out/x"):
                response = await http.post(
                    second.files_endpoint(JOB).replace(second.base_url, first.base_url)
                    + f"&path={name}&file_type=output",
                    files={"file": ("f", name.encode())},
                )
                assert response.status_code == 200
    finally:
        await first.stop()
        await second.stop()
    received = second.received_file(JOB, "tes-out/x")
    assert received is not None and received.read_bytes() == b"tes-out/x"
    assert reported == [(JOB, "tes-meta.tar")]  # once per job and replica, not per file


async def test_a_replica_with_another_key_refuses_the_urls(tmp_path: Path) -> None:
    first, other = (
        await replica(tmp_path / "shared", b"s" * 32),
        await replica(tmp_path / "shared", b"o" * 32),
    )
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                first.files_endpoint(JOB).replace(first.base_url, other.base_url)
                + "&path=x&file_type=output",
                files={"file": ("f", b"x")},
            )
    finally:
        await first.stop()
        await other.stop()
    assert response.status_code == 403


def test_a_token_of_an_earlier_key_is_still_accepted(tmp_path: Path) -> None:
    old = StagingTokens(b"o" * 32, ttl=60)
    new = StagingTokens(b"n" * 32, ttl=60, also_accepted=[b"o" * 32])
    assert new.verify(old.sign("out", JOB), "out", JOB)
    assert not StagingTokens(b"n" * 32, ttl=60).verify(old.sign("out", JOB), "out", JOB)


def test_an_input_is_staged_by_a_hard_link_on_the_same_filesystem(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"big")
    staging = StagingServer(tmp_path / "shared", StagingTokens(b"s" * 32, ttl=60))
    staging.stage_input(JOB, "tes-in-0", source)
    assert staging.input_path(JOB, "tes-in-0").stat().st_ino == source.stat().st_ino


async def test_the_health_endpoint_answers_for_load_balancers(server: StagingServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.base_url}/pulsar-staging/healthz")
    assert response.status_code == 200
