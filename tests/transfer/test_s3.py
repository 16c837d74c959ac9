"""s3:// inputs and outputs against a real moto server on 127.0.0.1."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.services.s3_server import S3Server
from tests.transfer.conftest import BUCKET, make_settings


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_file_input_is_downloaded(s3: S3Server, work_dir: Path) -> None:
    key = f"{unique_prefix()}/in.txt"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"from s3")
    mux = TransferMux(make_settings(s3=s3))
    try:
        assert await mux.download(f"s3://{BUCKET}/{key}", work_dir / "in.txt") == [work_dir / "in.txt"]
    finally:
        await mux.aclose()
    assert (work_dir / "in.txt").read_bytes() == b"from s3"


async def test_prefix_is_downloaded_recursively_as_directory(s3: S3Server, work_dir: Path) -> None:
    prefix = unique_prefix()
    for key in ["a.txt", "sub/b.txt"]:
        s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/dir/{key}", Body=key.encode())
    mux = TransferMux(make_settings(s3=s3))
    try:
        files = await mux.download(f"s3://{BUCKET}/{prefix}/dir", work_dir / "d", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert sorted(p.relative_to(work_dir / "d").as_posix() for p in files) == ["a.txt", "sub/b.txt"]
    assert (work_dir / "d" / "sub" / "b.txt").read_bytes() == b"sub/b.txt"


async def test_file_output_is_uploaded_with_a_string_size(s3: S3Server, work_dir: Path) -> None:
    src = work_dir / "out.txt"
    src.write_bytes(b"12345")
    url = f"s3://{BUCKET}/{unique_prefix()}/out.txt"
    mux = TransferMux(make_settings(s3=s3))
    try:
        logs = await mux.upload(src, url, container_path="/data/out.txt")
    finally:
        await mux.aclose()
    assert [(log.url, log.path, log.size_bytes) for log in logs] == [(url, "/data/out.txt", "5")]
    bucket_key = url.removeprefix(f"s3://{BUCKET}/")
    assert s3.client().get_object(Bucket=BUCKET, Key=bucket_key)["Body"].read() == b"12345"


async def test_large_output_goes_up_in_several_parts(s3: S3Server, work_dir: Path) -> None:
    src = work_dir / "big.bin"
    src.write_bytes(b"x" * (3 * 5 * 1024 * 1024 + 17))  # S3's smallest part is 5 MiB
    key = f"{unique_prefix()}/big.bin"
    mux = TransferMux(make_settings(s3=s3, chunk_bytes=5 * 1024 * 1024))
    try:
        await mux.upload(src, f"s3://{BUCKET}/{key}")
    finally:
        await mux.aclose()
    head = s3.client().head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == src.stat().st_size
    assert head["ETag"].strip('"').endswith("-4")  # a multipart ETag names its part count


async def test_directory_output_gives_one_log_per_file(s3: S3Server, work_dir: Path) -> None:
    (work_dir / "res" / "sub").mkdir(parents=True)
    (work_dir / "res" / "a.txt").write_text("a")
    (work_dir / "res" / "sub" / "b.txt").write_text("bb")
    base = f"s3://{BUCKET}/{unique_prefix()}/res"
    mux = TransferMux(make_settings(s3=s3))
    try:
        logs = await mux.upload(work_dir / "res", base, TesFileType.DIRECTORY, container_path="/out/res")
    finally:
        await mux.aclose()
    assert [(log.url, log.path, log.size_bytes) for log in logs] == [
        (f"{base}/a.txt", "/out/res/a.txt", "1"),
        (f"{base}/sub/b.txt", "/out/res/sub/b.txt", "2"),
    ]


async def test_missing_object_fails_naming_the_url(s3: S3Server, work_dir: Path) -> None:
    url = f"s3://{BUCKET}/{unique_prefix()}/absent.txt"
    mux = TransferMux(make_settings(s3=s3))
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(url, work_dir / "x")
    finally:
        await mux.aclose()
    assert url in str(caught.value) and "not found" in str(caught.value)
    assert s3.secret_key not in str(caught.value)
    assert not (work_dir / "x").exists()


async def test_missing_bucket_fails(s3: S3Server, work_dir: Path) -> None:
    mux = TransferMux(make_settings(s3=s3))
    try:
        with pytest.raises(TransferError, match="not found"):
            await mux.download("s3://no-such-bucket-here/x", work_dir / "x")
    finally:
        await mux.aclose()


async def test_empty_prefix_as_directory_input_fails(s3: S3Server, work_dir: Path) -> None:
    mux = TransferMux(make_settings(s3=s3))
    try:
        with pytest.raises(TransferError, match="no objects"):
            await mux.download(f"s3://{BUCKET}/{unique_prefix()}/none", work_dir / "d", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()


async def test_unreachable_endpoint_fails_without_leaking_keys(s3: S3Server, work_dir: Path) -> None:
    from tesp_api.config.settings import S3Credential
    from tests.services.s3_server import free_port

    dead = S3Credential(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region=s3.region,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
    )
    mux = TransferMux(make_settings(retries=1).model_copy(update={"s3": [dead]}))
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(f"s3://{BUCKET}/x", work_dir / "x")
    finally:
        await mux.aclose()
    message = str(caught.value)
    assert "cannot connect" in message and f"s3://{BUCKET}/x" in message
    assert s3.secret_key not in message and s3.access_key not in message


async def test_presigned_get_url_is_readable_over_http(s3: S3Server, work_dir: Path) -> None:
    key = f"{unique_prefix()}/signed.txt"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"signed")
    mux = TransferMux(make_settings(s3=s3))
    try:
        signed = mux.presign(f"s3://{BUCKET}/{key}", "GET")
        assert signed.startswith(s3.endpoint_url) and "Signature" in signed
        await mux.download(signed, work_dir / "signed.txt")
    finally:
        await mux.aclose()
    assert (work_dir / "signed.txt").read_bytes() == b"signed"


async def test_wrong_credentials_fail_as_access_denied_without_leaking_them(work_dir: Path) -> None:
    from tests.services.s3_server import s3_server

    with s3_server(check_credentials=True) as strict:
        mux = TransferMux(make_settings(s3=strict))
        try:
            with pytest.raises(TransferError) as caught:
                await mux.download(f"s3://{BUCKET}/in.txt", work_dir / "in.txt")
        finally:
            await mux.aclose()
    message = str(caught.value)
    assert "access denied" in message and f"s3://{BUCKET}/in.txt" in message
    assert strict.secret_key not in message and strict.access_key not in message


async def test_directory_input_refuses_keys_that_climb_out_of_the_destination(
    s3: S3Server, work_dir: Path
) -> None:
    prefix = unique_prefix()
    s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/dir/../../../escape.txt", Body=b"evil")
    mux = TransferMux(make_settings(s3=s3))
    try:
        with pytest.raises(TransferError, match="unsafe name"):
            await mux.download(f"s3://{BUCKET}/{prefix}/dir", work_dir / "d", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert not (work_dir.parent / "escape.txt").exists()


async def test_output_to_a_presigned_put_url_goes_over_http(s3: S3Server, work_dir: Path) -> None:
    src = work_dir / "out.txt"
    src.write_bytes(b"via signed url")
    key = f"{unique_prefix()}/signed-out.txt"
    mux = TransferMux(make_settings(s3=s3))
    try:
        signed = mux.presign(f"s3://{BUCKET}/{key}", "PUT")
        logs = await mux.upload(src, signed)
    finally:
        await mux.aclose()
    assert logs[0].size_bytes == "14"
    assert s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"via signed url"


async def test_large_object_moves_with_bounded_memory(
    s3: S3Server, work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """96 MiB sparse file up and back down in 5 MiB parts, 2 threads: Python allocations stay far below it.
    (Measured at the service's own log levels: DEBUG records kept by pytest would be counted too.)"""
    import tracemalloc

    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        caplog.set_level(logging.WARNING, logger=name)

    mib = 1024 * 1024
    src = work_dir / "big.bin"
    with open(src, "wb") as f:
        f.truncate(96 * mib)
    url = f"s3://{BUCKET}/{unique_prefix()}/big.bin"
    mux = TransferMux(make_settings(s3=s3, chunk_bytes=5 * mib, s3_max_concurrency=2))
    tracemalloc.start()
    try:
        await mux.upload(src, url)
        await mux.download(url, work_dir / "back.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await mux.aclose()
        s3.client().delete_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))
    assert (work_dir / "back.bin").stat().st_size == 96 * mib
    assert peak < 40 * mib, f"peak Python allocation {peak / mib:.1f} MiB"
