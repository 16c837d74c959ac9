"""file:// URLs and plain absolute paths, restricted to ``transfer.allowed_dirs``.

Copies go through a bounded buffer in a worker thread (shutil.copyfileobj), so a large file
neither fills memory nor blocks the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

from tesp_api.config.settings import TransferSettings
from tesp_api.transfer.base import part_file
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.urls import join_url, local_path_of, resolve_inside


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error that does not repeat the (possibly private) path."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    if exc.errno == errno.ENOTDIR:
        return "not a directory"
    return exc.strerror or type(exc).__name__


class FileBackend:
    def __init__(self, settings: TransferSettings) -> None:
        self._allowed = settings.allowed_dirs
        self._chunk = settings.chunk_bytes

    def _path(self, url: str, direction: str) -> Path:
        try:
            raw = local_path_of(url)
        except ValueError as exc:
            raise TransferError(url, str(exc), direction=direction) from None
        path = resolve_inside(raw, self._allowed)
        if path is None:
            raise TransferError(url, "path is outside the allowed directories", direction=direction)
        return path

    def _copy(self, src: Path, dest: Path) -> None:
        tmp = part_file(dest)
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, self._chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def download_file(self, url: str, dest: Path) -> None:
        src = self._path(url, "download")
        if src.is_dir():
            raise TransferError(url, "is a directory (declare the input as DIRECTORY)", direction="download")
        try:
            await asyncio.to_thread(self._copy, src, dest)
        except OSError as exc:
            raise TransferError(url, os_reason(exc), direction="download") from None

    async def list_directory(self, url: str) -> list[tuple[str, str]]:
        root = self._path(url, "download")
        if not root.is_dir():
            raise TransferError(url, "no such directory", direction="download")

        def walk() -> list[tuple[str, str]]:
            found = []
            for path in sorted(root.rglob("*")):
                # Symlinks inside may point out of the allowed dirs: check every file, follow none blindly.
                if path.is_file() and resolve_inside(str(path), self._allowed) is not None:
                    rel = path.relative_to(root).as_posix()
                    found.append((rel, join_url(url, rel)))
            return found

        return await asyncio.to_thread(walk)

    async def upload_file(self, src: Path, url: str) -> None:
        dest = self._path(url, "upload")
        try:
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(self._copy, src, dest)
        except OSError as exc:
            raise TransferError(url, os_reason(exc), direction="upload") from None

    async def aclose(self) -> None:
        return None
