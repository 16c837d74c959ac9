"""Read back what the job runner left: executor logs, system messages and the output manifest (tes-meta.tar).

The archive is read in memory, member by member (small files: timestamps, exit codes, log tails
already cut to ``log_tail_bytes``), never extracted: no name in it can reach the filesystem.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tesp_api.tes.models import TesExecutorLog

MAX_MEMBER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    output_index: int
    size: int
    rel_path: str  # under the job's working directory: fs/<container path>

    @property
    def container_path(self) -> str:
        return self.rel_path[len("fs") :] if self.rel_path.startswith("fs/") else "/" + self.rel_path


@dataclass(frozen=True, slots=True)
class SystemNote:
    """What the runner says about an executor beyond its exit code. ``kind``: "task" (the task's own
    doing, e.g. a stream path through a link an executor planted: EXECUTOR_ERROR) or "runtime" (the
    runtime could not run it, e.g. docker exit 125: SYSTEM_ERROR)."""

    kind: str
    message: str


@dataclass(slots=True)
class JobResults:
    executor_logs: dict[int, TesExecutorLog]
    manifest: list[ManifestEntry]
    system: dict[int, SystemNote] = field(default_factory=dict)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _note(data: bytes) -> SystemNote:
    """``<kind>\n<message>`` as the runner writes it."""
    kind, _, message = _text(data).partition("\n")
    if kind not in ("task", "runtime"):
        return SystemNote("runtime", _text(data))
    return SystemNote(kind, message)


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    fields = data.split(b"\0")
    entries = []
    for k in range(0, len(fields) - 2, 3):
        try:
            idx, size = int(fields[k]), int(fields[k + 1])
        except ValueError:
            continue
        rel = _text(fields[k + 2])
        rel = rel.removeprefix("./")
        if not rel.startswith("fs/") or ".." in rel.split("/"):
            continue
        entries.append(ManifestEntry(idx, size, rel))
    return entries


def inline_meta(stdout: str, begin: str, end: str) -> bytes | None:
    """The packed logs the job script printed on its stdout (base64 of the tar, or of the gzipped
    tar, between two marker lines), or None when they are not there whole (too big, cut by Pulsar, gzip/base64 missing):
    the engine then downloads the tar instead."""
    lines = stdout.splitlines()
    try:
        start = lines.index(begin)
        if lines[start + 2] != end:
            return None
        data = base64.b64decode(lines[start + 1], validate=True)
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (ValueError, IndexError, binascii.Error, OSError, EOFError, zlib.error):
        return None


def read_results(tar_path: Path | bytes, n_executors: int) -> JobResults:
    """``tar_path``: the downloaded tes-meta.tar, or its bytes (from ``inline_meta``)."""
    files: dict[str, bytes] = {}
    source = {"fileobj": io.BytesIO(tar_path)} if isinstance(tar_path, bytes) else {"name": tar_path}
    with tarfile.open(mode="r:", **source) as tar:
        for member in tar:
            if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                continue
            name = member.name.removeprefix("./")
            fh = tar.extractfile(member)
            if fh is not None:
                files[name] = fh.read()
    logs: dict[int, TesExecutorLog] = {}
    for i in range(n_executors):
        if f"{i}.start" not in files:
            continue  # never started: the sequence stopped before it
        exit_raw = _text(files.get(f"{i}.exit", b"")).strip()
        try:
            exit_code = int(exit_raw)
        except ValueError:
            exit_code = -1  # started but never finished (killed)
        logs[i] = TesExecutorLog(
            start_time=_text(files[f"{i}.start"]).strip() or None,
            end_time=_text(files.get(f"{i}.end", b"")).strip() or None,
            exit_code=exit_code,
            stdout=_text(files.get(f"{i}.stdout.tail", b"")),
            stderr=_text(files.get(f"{i}.stderr.tail", b"")),
        )
    system = {i: _note(files[f"{i}.system"]) for i in range(n_executors) if f"{i}.system" in files}
    return JobResults(logs, parse_manifest(files.get("manifest", b"")), system)
