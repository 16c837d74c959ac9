"""http(s):// inputs and outputs against a real Starlette/uvicorn server on 127.0.0.1."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tesp_api.config.settings import HttpCredential
from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.services.http_server import HttpServer
from tests.transfer.conftest import make_settings


def put_file(http: HttpServer, relative: str, data: bytes) -> str:
    target = http.root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"{http.base_url}/{relative}"


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def fetch(settings_http: HttpServer | None, url: str, dest: Path, **kw: object) -> list[Path]:
    mux = TransferMux(make_settings(http=settings_http, **kw))
    try:
        return await mux.download(url, dest)
    finally:
        await mux.aclose()


async def test_public_file_input_is_downloaded(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"{unique()}/in.txt", b"from http")
    await fetch(None, url, work_dir / "in.txt")
    assert (work_dir / "in.txt").read_bytes() == b"from http"


async def test_bearer_token_from_settings_is_sent_to_its_host(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"private/{unique()}/in.txt", b"secret data")
    await fetch(http, url, work_dir / "in.txt")
    assert (work_dir / "in.txt").read_bytes() == b"secret data"


async def test_basic_auth_from_settings_is_used(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"basic/{unique()}/in.txt", b"basic")
    cred = HttpCredential(host=http.host, username=http.user, password=http.password)
    mux = TransferMux(make_settings().model_copy(update={"http": [cred]}))
    try:
        await mux.download(url, work_dir / "in.txt")
    finally:
        await mux.aclose()
    assert (work_dir / "in.txt").read_bytes() == b"basic"


async def test_basic_auth_from_the_url_is_used(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"basic/{unique()}/in.txt", b"basic url")
    url = url.replace("http://", f"http://{http.user}:{http.password}@")
    await fetch(None, url, work_dir / "in.txt")
    assert (work_dir / "in.txt").read_bytes() == b"basic url"


async def test_redirect_is_followed(http: HttpServer, work_dir: Path) -> None:
    name = f"{unique()}/in.txt"
    put_file(http, name, b"moved")
    await fetch(None, f"{http.base_url}/redirect/{name}", work_dir / "in.txt")
    assert (work_dir / "in.txt").read_bytes() == b"moved"


async def test_server_error_is_retried_until_it_succeeds(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"flaky/2/{unique()}/in.txt", b"eventually")
    await fetch(None, url, work_dir / "in.txt", retries=2)
    assert (work_dir / "in.txt").read_bytes() == b"eventually"


async def test_server_error_fails_once_retries_run_out(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"flaky/5/{unique()}/in.txt", b"never")
    with pytest.raises(TransferError, match=r"HTTP 503 \(gave up after 2 attempts\)"):
        await fetch(None, url, work_dir / "in.txt", retries=1)


async def test_not_found_fails_naming_the_url_without_its_signature(http: HttpServer, work_dir: Path) -> None:
    url = f"{http.base_url}/{unique()}/absent.txt?X-Amz-Signature=S1GNATURE"
    with pytest.raises(TransferError) as caught:
        await fetch(None, url, work_dir / "x")
    message = str(caught.value)
    assert "not found (HTTP 404)" in message and url.split("?")[0] in message
    assert "S1GNATURE" not in message
    assert not (work_dir / "x").exists()


async def test_missing_credentials_fail_as_access_denied(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"private/{unique()}/in.txt", b"x")
    with pytest.raises(TransferError, match=r"access denied \(HTTP 401\)"):
        await fetch(None, url, work_dir / "in.txt")


async def test_wrong_token_fails_without_leaking_it(http: HttpServer, work_dir: Path) -> None:
    url = put_file(http, f"private/{unique()}/in.txt", b"x")
    cred = HttpCredential(host=http.host, bearer_token="Wr0ngT0ken")
    mux = TransferMux(make_settings().model_copy(update={"http": [cred]}))
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(url, work_dir / "in.txt")
    finally:
        await mux.aclose()
    assert "HTTP 403" in str(caught.value) and "Wr0ngT0ken" not in str(caught.value)


async def test_unreachable_host_fails(work_dir: Path) -> None:
    from tests.services.s3_server import free_port

    with pytest.raises(TransferError, match="cannot connect to 127.0.0.1"):
        await fetch(None, f"http://127.0.0.1:{free_port()}/x", work_dir / "x", retries=0)


async def test_directory_input_is_rejected_clearly(http: HttpServer, work_dir: Path) -> None:
    mux = TransferMux(make_settings())
    try:
        with pytest.raises(TransferError, match="no standard directory listing"):
            await mux.download(f"{http.base_url}/dir/", work_dir / "d", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()


async def test_file_output_is_put(http: HttpServer, work_dir: Path) -> None:
    src = work_dir / "out.txt"
    src.write_bytes(b"put me")
    url = f"{http.base_url}/private/{unique()}/out.txt"
    mux = TransferMux(make_settings(http=http))
    try:
        logs = await mux.upload(src, url)
    finally:
        await mux.aclose()
    assert logs[0].size_bytes == "6"
    assert (http.root / url.removeprefix(http.base_url + "/")).read_bytes() == b"put me"


async def test_directory_output_is_put_file_by_file(http: HttpServer, work_dir: Path) -> None:
    (work_dir / "res" / "sub").mkdir(parents=True)
    (work_dir / "res" / "a b.txt").write_text("a")
    (work_dir / "res" / "sub" / "c.txt").write_text("c")
    base = f"{http.base_url}/{unique()}/res"
    mux = TransferMux(make_settings())
    try:
        logs = await mux.upload(work_dir / "res", base, TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert [log.url for log in logs] == [f"{base}/a%20b.txt", f"{base}/sub/c.txt"]
    stored = http.root / base.removeprefix(http.base_url + "/")
    assert (stored / "a b.txt").read_text() == "a" and (stored / "sub" / "c.txt").read_text() == "c"


async def test_output_refused_by_the_server_fails(http: HttpServer, work_dir: Path) -> None:
    src = work_dir / "out.txt"
    src.write_text("x")
    with pytest.raises(TransferError, match="HTTP 401"):
        mux = TransferMux(make_settings())
        try:
            await mux.upload(src, f"{http.base_url}/private/{unique()}/out.txt")
        finally:
            await mux.aclose()


async def test_unknown_host_name_fails_clearly(work_dir: Path) -> None:
    with pytest.raises(TransferError, match="cannot resolve host name no-such-host.invalid"):
        await fetch(None, "http://no-such-host.invalid/x", work_dir / "x", retries=0)


async def test_a_gz_file_served_with_gzip_encoding_arrives_unchanged(
    http: HttpServer, work_dir: Path
) -> None:
    import gzip

    packed = gzip.compress(b"still compressed")
    url = put_file(http, f"gzipped/{unique()}/data.gz", packed)
    await fetch(None, url, work_dir / "data.gz")
    assert (work_dir / "data.gz").read_bytes() == packed
