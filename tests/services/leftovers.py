"""Processes a test service leaves outside its own process tree, found in /proc and killed by PID.

Some helpers detach from whoever started them (podman's ``conmon`` double-forks and is re-parented
to init; Slurm's ``slurmstepd`` outlives slurmd), so stopping the service's own processes does not
reach them, and its CLI's cleanup cannot reach one it has no record of (a podman CLI killed while it
created a container leaves a conmon and a ``runc init`` that ``podman ps -a`` does not list). Each is
recognised by its name and a word only its own service's processes carry (a path under the
service's private directory, a variable naming its configuration): another session's processes are
never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["alive", "kill_trees", "processes"]


def _stat_fields(pid: int) -> list[str] | None:
    """``state ppid pgrp ...`` of /proc/<pid>/stat (after "pid (comm) "), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (one whose parent, init here, never reaps it)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def processes(comm: str, matches: Callable[[list[bytes]], bool], source: str = "cmdline") -> list[int]:
    """Live processes named ``comm`` whose ``/proc/<pid>/<source>`` words (``cmdline`` or ``environ``,
    NUL-separated) satisfy ``matches``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != comm:
                continue
            words = (proc / source).read_bytes().split(b"\0")
        except OSError:
            continue
        if matches(words) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _descendants(pids: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(proc.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(proc.name))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_trees(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL to each of ``pids`` and everything below it (collected first: a killed parent's children
    are re-parented and could no longer be found), then wait until none of them lives, up to ``timeout``."""
    roots = list(pids)
    everyone = [*_descendants(roots), *roots]
    for pid in everyone:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in everyone) and time.monotonic() < deadline:
        time.sleep(0.05)
