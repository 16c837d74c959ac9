"""file:// URLs and plain paths: only inside transfer.allowed_dirs, symlinks and ``..`` resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.transfer.conftest import make_settings


async def run_download(
    allowed: Path, url: str, dest: Path, file_type: TesFileType = TesFileType.FILE
) -> list[Path]:
    mux = TransferMux(make_settings(allowed_dir=allowed))
    try:
        return await mux.download(url, dest, file_type)
    finally:
        await mux.aclose()


async def test_file_url_input_is_copied(allowed_dir: Path, work_dir: Path) -> None:
    (allowed_dir / "in.txt").write_text("local")
    await run_download(allowed_dir, f"file://{allowed_dir}/in.txt", work_dir / "in.txt")
    assert (work_dir / "in.txt").read_text() == "local"


async def test_plain_absolute_path_input_is_copied(allowed_dir: Path, work_dir: Path) -> None:
    (allowed_dir / "in.txt").write_text("plain")
    await run_download(allowed_dir, f"{allowed_dir}/in.txt", work_dir / "in.txt")
    assert (work_dir / "in.txt").read_text() == "plain"


async def test_percent_encoded_file_url_is_decoded(allowed_dir: Path, work_dir: Path) -> None:
    (allowed_dir / "a b.txt").write_text("spaced")
    await run_download(allowed_dir, f"file://{allowed_dir}/a%20b.txt", work_dir / "in.txt")
    assert (work_dir / "in.txt").read_text() == "spaced"


async def test_directory_input_is_copied_recursively(allowed_dir: Path, work_dir: Path) -> None:
    (allowed_dir / "d" / "sub").mkdir(parents=True)
    (allowed_dir / "d" / "a").write_text("a")
    (allowed_dir / "d" / "sub" / "b").write_text("b")
    files = await run_download(allowed_dir, f"file://{allowed_dir}/d", work_dir / "d", TesFileType.DIRECTORY)
    assert sorted(p.relative_to(work_dir / "d").as_posix() for p in files) == ["a", "sub/b"]


async def test_directory_input_skips_symlinks_leaving_the_allowed_dirs(
    allowed_dir: Path, work_dir: Path
) -> None:
    (allowed_dir / "d").mkdir()
    (allowed_dir / "d" / "ok").write_text("ok")
    (allowed_dir / "d" / "leak").symlink_to("/etc/hostname")
    files = await run_download(allowed_dir, f"file://{allowed_dir}/d", work_dir / "d", TesFileType.DIRECTORY)
    assert [p.name for p in files] == ["ok"]


async def test_input_outside_allowed_dirs_is_refused(allowed_dir: Path, work_dir: Path) -> None:
    with pytest.raises(TransferError, match="outside the allowed directories"):
        await run_download(allowed_dir, "file:///etc/hostname", work_dir / "x")


async def test_symlink_pointing_out_is_refused(allowed_dir: Path, work_dir: Path) -> None:
    (allowed_dir / "link").symlink_to("/etc/hostname")
    with pytest.raises(TransferError, match="outside the allowed directories"):
        await run_download(allowed_dir, f"file://{allowed_dir}/link", work_dir / "x")


async def test_dot_dot_is_refused(allowed_dir: Path, work_dir: Path) -> None:
    with pytest.raises(TransferError, match="outside the allowed directories"):
        await run_download(allowed_dir, f"{allowed_dir}/../../../etc/hostname", work_dir / "x")


async def test_missing_input_fails_naming_it(allowed_dir: Path, work_dir: Path) -> None:
    with pytest.raises(
        TransferError, match=f"download of file://{allowed_dir}/none.txt failed: no such file"
    ):
        await run_download(allowed_dir, f"file://{allowed_dir}/none.txt", work_dir / "x")


async def test_file_output_is_written_with_parents(allowed_dir: Path, work_dir: Path) -> None:
    (work_dir / "out.txt").write_text("out")
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    try:
        logs = await mux.upload(
            work_dir / "out.txt", f"file://{allowed_dir}/r/s/out.txt", container_path="/o.txt"
        )
    finally:
        await mux.aclose()
    assert (allowed_dir / "r" / "s" / "out.txt").read_text() == "out"
    assert [(log.path, log.size_bytes) for log in logs] == [("/o.txt", "3")]


async def test_output_outside_allowed_dirs_is_refused(
    allowed_dir: Path, work_dir: Path, tmp_path: Path
) -> None:
    (work_dir / "out.txt").write_text("out")
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    try:
        with pytest.raises(TransferError, match="outside the allowed directories"):
            await mux.upload(work_dir / "out.txt", f"file://{tmp_path}/elsewhere.txt")
    finally:
        await mux.aclose()
    assert not (tmp_path / "elsewhere.txt").exists()


async def test_directory_output_is_written_file_by_file(allowed_dir: Path, work_dir: Path) -> None:
    (work_dir / "res" / "sub").mkdir(parents=True)
    (work_dir / "res" / "a").write_text("a")
    (work_dir / "res" / "sub" / "b").write_text("bb")
    mux = TransferMux(make_settings(allowed_dir=allowed_dir))
    try:
        logs = await mux.upload(work_dir / "res", f"file://{allowed_dir}/res", TesFileType.DIRECTORY)
    finally:
        await mux.aclose()
    assert [log.size_bytes for log in logs] == ["1", "2"]
    assert (allowed_dir / "res" / "sub" / "b").read_text() == "bb"
