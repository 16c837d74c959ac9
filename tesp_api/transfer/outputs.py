"""Turn a TES output with POSIX wildcards into one upload per matching file.

TES 1.1: for a wildcard ``path``, ``url`` is a directory and ``path_prefix`` is stripped from
each match; the rest of the match is appended to ``url``.

Without ``path_prefix`` (Nextflow sends glob outputs like that) we use the directory part of
``path`` before its first wildcard component: ``/data/out/*.txt`` -> prefix ``/data/out/``, so
``/data/out/a.txt`` goes to ``url/a.txt`` and ``/data/*/x.bam`` sends ``/data/s1/x.bam`` to
``url/s1/x.bam``. That rule, and matching, are the JobPlan's (tes/jobplan.py), applied at admission too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The one wildcard implementation is the JobPlan's; re-exported here for the transfer side.
from tesp_api.tes.jobplan import effective_prefix, has_wildcard, implicit_prefix, matches, normalise
from tesp_api.tes.models import TesOutput
from tesp_api.transfer.urls import join_url

__all__ = [
    "OutputTarget",
    "effective_prefix",
    "glob_local",
    "has_wildcard",
    "implicit_prefix",
    "matches",
    "plan_wildcard_output",
]


@dataclass(frozen=True)
class OutputTarget:
    local: Path  # the file on this host
    url: str  # where it goes
    path: str  # the path the task saw (container path), for TesOutputFileLog.path


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
    for container_path in sorted({normalise(p) for p in matched_paths}):
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
