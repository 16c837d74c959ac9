"""ftp:// inputs and outputs against a real pyftpdlib server on 127.0.0.1."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.services.ftp_server import FtpServer
from tests.transfer.conftest import make_settings


def unique_dir(ftp: FtpServer) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    (ftp.root / name).mkdir()
    return name


async def test_file_input_with_login_in_the_url_is_downloaded(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    (ftp.root / d / "in.txt").write_text("from ftp")
    mux = TransferMux(make_settings())
    try:
        await mux.download(ftp.url(f"{d}/in.txt"), work_dir / "in.txt")
    finally:
        await mux.aclose()
    assert (work_dir / "in.txt").read_text() == "from ftp"


async def test_file_input_with_login_from_settings_is_downloaded(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    (ftp.root / d / "in.txt").write_text("settings login")
    mux = TransferMux(make_settings(ftp=ftp))
    try:
        await mux.download(ftp.url(f"{d}/in.txt", with_login=False), work_dir / "in.txt")
    finally:
        await mux.aclose()
    assert (work_dir / "in.txt").read_text() == "settings login"


async def test_directory_input_is_downloaded_recursively(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    (ftp.root / d / "sub").mkdir()
    (ftp.root / d / "a.txt").write_text("a")
    (ftp.root / d / "sub" / "b.txt").write_text("b")
    mux = TransferMux(make_settings(ftp=ftp))
    try:
        files = await mux.download(ftp.url(d, with_login=False), work_dir / "d", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert sorted(p.relative_to(work_dir / "d").as_posix() for p in files) == ["a.txt", "sub/b.txt"]


async def test_file_output_is_stored_and_parent_directories_made(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    src = work_dir / "out.txt"
    src.write_text("up")
    url = ftp.url(f"{d}/new/deeper/out.txt", with_login=False)
    mux = TransferMux(make_settings(ftp=ftp))
    try:
        logs = await mux.upload(src, url)
    finally:
        await mux.aclose()
    assert (ftp.root / d / "new" / "deeper" / "out.txt").read_text() == "up"
    assert logs[0].size_bytes == "2" and logs[0].url == url


async def test_output_log_url_never_holds_the_password(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    src = work_dir / "out.txt"
    src.write_text("x")
    mux = TransferMux(make_settings())
    try:
        logs = await mux.upload(src, ftp.url(f"{d}/out.txt"))
    finally:
        await mux.aclose()
    assert ftp.password not in logs[0].url


async def test_directory_output_gives_one_log_per_file(ftp: FtpServer, work_dir: Path) -> None:
    d = unique_dir(ftp)
    (work_dir / "res" / "sub").mkdir(parents=True)
    (work_dir / "res" / "a.txt").write_text("a")
    (work_dir / "res" / "sub" / "b.txt").write_text("b")
    base = ftp.url(f"{d}/res", with_login=False)
    mux = TransferMux(make_settings(ftp=ftp))
    try:
        logs = await mux.upload(work_dir / "res", base, TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert [log.url for log in logs] == [f"{base}/a.txt", f"{base}/sub/b.txt"]
    assert (ftp.root / d / "res" / "sub" / "b.txt").read_text() == "b"


async def test_wrong_password_fails_without_leaking_it(ftp: FtpServer, work_dir: Path) -> None:
    url = f"ftp://{ftp.user}:Wr0ngPassw0rd@{ftp.host}:{ftp.port}/x.txt"
    mux = TransferMux(make_settings())
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(url, work_dir / "x")
    finally:
        await mux.aclose()
    message = str(caught.value)
    assert "login refused" in message and f"{ftp.host}:{ftp.port}/x.txt" in message
    assert "Wr0ngPassw0rd" not in message


async def test_missing_file_fails_naming_the_url(ftp: FtpServer, work_dir: Path) -> None:
    url = ftp.url("absent/none.txt")
    mux = TransferMux(make_settings())
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(url, work_dir / "x")
    finally:
        await mux.aclose()
    message = str(caught.value)
    assert "absent/none.txt" in message and "not found" in message and ftp.password not in message
    assert not (work_dir / "x").exists()


async def test_unreachable_server_fails_after_retries(work_dir: Path) -> None:
    from tests.services.s3_server import free_port

    url = f"ftp://someone:S3cretPw@127.0.0.1:{free_port()}/x.txt"
    mux = TransferMux(make_settings(retries=1))
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(url, work_dir / "x")
    finally:
        await mux.aclose()
    assert "cannot connect" in str(caught.value) and "S3cretPw" not in str(caught.value)


async def test_unknown_host_name_fails_clearly(work_dir: Path) -> None:
    mux = TransferMux(make_settings(retries=0))
    try:
        with pytest.raises(TransferError, match="cannot resolve host name no-such-host.invalid"):
            await mux.download("ftp://no-such-host.invalid/x", work_dir / "x")
    finally:
        await mux.aclose()
