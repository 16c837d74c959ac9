"""TransferMux rules that hold for every scheme: dispatch, missing outputs, confinement, memory, disk full."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from pathlib import Path

import pytest

from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.services.http_server import HttpServer
from tests.transfer.conftest import make_settings

MIB = 1024 * 1024


async def test_unsupported_scheme_is_refused(work_dir: Path) -> None:
    mux = TransferMux(make_settings())
    with pytest.raises(TransferError, match="unsupported URL scheme 'gs'"):
        await mux.download("gs://bucket/x", work_dir / "x")


async def test_scheme_disabled_in_settings_is_refused(work_dir: Path) -> None:
    mux = TransferMux(make_settings(schemes=["s3"]))
    with pytest.raises(TransferError, match="unsupported URL scheme 'http'"):
        await mux.download("http://127.0.0.1/x", work_dir / "x")


async def test_missing_output_file_fails_naming_the_container_path(allowed_dir: Path, work_dir: Path) -> None:
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    with pytest.raises(TransferError, match="the output /data/out.txt does not exist"):
        await mux.upload(work_dir / "absent", f"file://{allowed_dir}/out.txt", container_path="/data/out.txt")


async def test_missing_output_directory_fails(allowed_dir: Path, work_dir: Path) -> None:
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    with pytest.raises(TransferError, match="output directory /data/res does not exist"):
        await mux.upload(
            work_dir / "absent", f"file://{allowed_dir}/r", TesFileType.DIRECTORY, container_path="/data/res"
        )


async def test_output_symlink_out_of_the_job_directory_is_refused(allowed_dir: Path, work_dir: Path) -> None:
    (work_dir / "out.txt").symlink_to("/etc/hostname")
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    with pytest.raises(TransferError, match="points outside the job directory"):
        await mux.upload(work_dir / "out.txt", f"file://{allowed_dir}/o", confine_to=work_dir)


async def test_directory_output_skips_symlinks_out_of_the_job_directory(
    allowed_dir: Path, work_dir: Path
) -> None:
    (work_dir / "res").mkdir()
    (work_dir / "res" / "ok").write_text("ok")
    (work_dir / "res" / "leak").symlink_to("/etc/hostname")
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    logs = await mux.upload(
        work_dir / "res", f"file://{allowed_dir}/r", TesFileType.DIRECTORY, confine_to=work_dir
    )
    assert [log.path.rsplit("/", 1)[1] for log in logs] == ["ok"]


async def test_large_file_moves_with_bounded_memory(http: HttpServer, work_dir: Path) -> None:
    """200 MiB sparse file PUT to the HTTP server and fetched back: Python allocations stay far below it."""
    src = work_dir / "big.bin"
    with open(src, "wb") as f:
        f.truncate(200 * MIB)
    url = f"{http.base_url}/{uuid.uuid4().hex}/big.bin"
    mux = TransferMux(make_settings(chunk_bytes=1 * MIB))
    tracemalloc.start()
    try:
        await mux.upload(src, url)
        await mux.download(url, work_dir / "back.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await mux.aclose()
        (http.root / url.removeprefix(http.base_url + "/")).unlink(missing_ok=True)
    assert (work_dir / "back.bin").stat().st_size == 200 * MIB
    assert peak < 32 * MIB, f"peak Python allocation {peak / MIB:.1f} MiB"


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap for a tiny tmpfs")
def test_full_disk_fails_with_a_clear_reason(http: HttpServer, tmp_path: Path) -> None:
    """The download runs in a bubblewrap sandbox whose destination is a 256 KiB tmpfs (a real full disk)."""
    name = f"{uuid.uuid4().hex}/big.bin"
    (http.root / name).parent.mkdir(parents=True)
    (http.root / name).write_bytes(b"x" * (2 * MIB))
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from tesp_api.transfer.mux import TransferError, TransferMux
        from tests.transfer.conftest import make_settings
        async def main():
            mux = TransferMux(make_settings(retries=0))
            try:
                await mux.download("{http.base_url}/{name}", Path("/mnt/full/big.bin"))
            except TransferError as exc:
                print(exc)
            finally:
                await mux.aclose()
        asyncio.run(main())
        """
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            "/usr/bin/bwrap",
            "--dev-bind",
            "/",
            "/",
            "--size",
            str(256 * 1024),
            "--tmpfs",
            "/mnt/full",
            "--chdir",
            str(repo),
            sys.executable,
            "-c",
            script,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
    )
    assert "no space left on device" in result.stdout, result.stdout + result.stderr
    assert f"/{name}" in result.stdout
