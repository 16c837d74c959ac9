"""Turn a TES output with POSIX wildcards into one upload per matching file.

TES 1.1: for a wildcard ``path``, ``url`` is a directory and ``path_prefix`` is stripped from
each match; the rest of the match is appended to ``url``.

Without ``path_prefix`` (Nextflow sends glob outputs like that) we use the directory part of
``path`` before its first wildcard component: ``/data/out/*.txt`` -> prefix ``/data/out/``, so
``/data/out/a.txt`` goes to ``url/a.txt`` and ``/data/*/x.bam`` sends ``/data/s1/x.bam`` to
``url/s1/x.bam``. The API applies the same rule when it validates the task.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tesp_api.tes.models import TesOutput
from tesp_api.transfer.urls import join_url

_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class OutputTarget:
    local: Path  # the file on this host
    url: str  # where it goes
    path: str  # the path the task saw (container path), for TesOutputFileLog.path


def has_wildcards(path: str) -> bool:
    return bool(_WILDCARD.search(path))


def implicit_prefix(path: str) -> str:
    """The directory part of ``path`` before its first wildcard component, ending in "/"."""
    parts = PurePosixPath(path).parts
    fixed: list[str] = []
    for part in parts:
        if has_wildcards(part):
            break
        fixed.append(part)
    prefix = str(PurePosixPath(*fixed)) if fixed else "/"
    return prefix if prefix.endswith("/") else prefix + "/"


def effective_prefix(output: TesOutput) -> str:
    """``path_prefix`` when given, else :func:`implicit_prefix` of the path."""
    return output.path_prefix if output.path_prefix else implicit_prefix(output.path)


def matches(pattern: str, container_path: str) -> bool:
    """POSIX glob match per path component: ``*`` and ``?`` never cross a "/"."""
    pat_parts = PurePosixPath(pattern).parts
    path_parts = PurePosixPath(container_path).parts
    return len(pat_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(name, pat) for name, pat in zip(path_parts, pat_parts, strict=True)
    )


def plan_wildcard_output(
    output: TesOutput, matched_paths: Iterable[str], local_path_of: Callable[[str], Path]
) -> list[OutputTarget]:
    """One target per matched container path: prefix stripped, the rest appended to ``output.url``.

    ``matched_paths`` are absolute container paths the job produced (the caller globbed them,
    e.g. with :func:`glob_local`); paths that do not match ``output.path`` or do not start with the
    prefix are ignored, so a sloppy caller cannot upload something the task did not ask for.
    """
    prefix = effective_prefix(output)
    targets = []
    for container_path in sorted(set(matched_paths)):
        if not matches(output.path, container_path) or not container_path.startswith(prefix):
            continue
        relative = container_path[len(prefix) :].lstrip("/")
        if not relative:
            continue
        targets.append(
            OutputTarget(local_path_of(container_path), join_url(output.url, relative), container_path)
        )
    return targets


def glob_local(pattern: str, container_root: str, host_root: Path) -> list[str]:
    """Container paths matching ``pattern`` among files under ``host_root`` (which is mounted at
    ``container_root`` in the job). Directories are not matched; symlinks leaving ``host_root`` are skipped."""
    container_root = container_root.rstrip("/") or "/"
    if not (pattern == container_root or pattern.startswith(container_root.rstrip("/") + "/")):
        return []
    relative_pattern = pattern[len(container_root) :].lstrip("/")
    real_root = host_root.resolve()
    found = []
    for host_path in host_root.glob(relative_pattern):
        real = host_path.resolve()
        if host_path.is_file() and real_root in real.parents:
            rel = host_path.relative_to(host_root).as_posix()
            found.append(str(PurePosixPath(container_root) / rel))
    return sorted(found)
