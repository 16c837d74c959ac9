"""What the mux needs from one scheme: move ONE file each way, and list a remote directory.

Directory transfers, retries and output logs are the mux's job, so each backend stays a thin
adapter over its library (httpx, aioftp, boto3, the local file system).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol


class SchemeBackend(Protocol):
    async def download_file(self, url: str, dest: Path) -> None:
        """Write the remote file at ``url`` to ``dest`` (parent exists), streaming."""

    async def list_directory(self, url: str) -> list[tuple[str, str]]:
        """Every file below the remote directory ``url``, recursively: (relative POSIX path, file url)."""

    async def upload_file(self, src: Path, url: str) -> None:
        """Store the local file ``src`` at ``url``, streaming, creating parents where the scheme has any."""

    async def aclose(self) -> None: ...


def safe_relative(relative: str) -> str | None:
    """``relative`` if it stays inside its directory (no absolute path, no ``..``), else None.

    Remote listings are data from someone else: a key like ``a/../../etc/x`` must not let a
    directory download write outside its destination.
    """
    rel = PurePosixPath(relative.lstrip("/"))
    if not rel.parts or any(part in ("..", "") for part in rel.parts) or "\x00" in relative:
        return None
    return str(rel)


def part_file(dest: Path) -> Path:
    """Where a download is written before it is renamed to ``dest``: never a half file under the real name."""
    return dest.with_name(f".{dest.name}.part-{os.getpid()}")
