"""What the runtime benchmarks (bench_engine.py, bench_runtime_overhead.py) set up and measure alike.

* :func:`private_runtime`: docker on a private dockerd, or podman on a private store, each with
  local/busybox:1 imported (the test suite's launchers, tests/services), stopped at the end;
* :func:`session_cpu` / :func:`group_cpu`: CPU seconds of every process of a session (dockerd with
  containerd and the shims: the daemon side of each ``docker run``) or of a process group (Pulsar
  and the jobs it reaped), from /proc;
* :func:`real_python`: the interpreter binary the job runner gets, never a wrapper.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["group_cpu", "private_runtime", "real_python", "session_cpu"]

_PGRP, _SESSION = 2, 3  # /proc/<pid>/stat fields after "pid (comm) ": state ppid pgrp session ...


def _cpu_of(field: int, value: int) -> float:
    """CPU seconds (utime, stime, cutime, cstime) of the processes whose stat ``field`` is ``value``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value:
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def session_cpu(sid: int | None) -> float:
    """CPU seconds used so far by session ``sid`` (a private dockerd started in a session of its own);
    0 when there is no daemon (podman, bwrap)."""
    return 0.0 if sid is None else _cpu_of(_SESSION, sid)


def group_cpu(pgid: int) -> float:
    """CPU seconds of a process group (Pulsar: the server and the jobs it has reaped)."""
    return _cpu_of(_PGRP, pgid)


def real_python() -> str:
    """The interpreter the job runner gets (``runtime.runner_python``): a binary, never a wrapper. A
    pyenv shim first on Pulsar's PATH (as on this machine) is a bash script that costs every job
    ~60-70 ms and ~55 ms CPU before Python even starts: a direct side's ``bash`` pays nothing alike,
    so comparing with it would measure pyenv, not tesp-api."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@contextmanager
def private_runtime(kind: str, tmp: Path) -> Iterator[tuple[str, dict[str, str], int | None]]:
    """(the runtime CLI, its environment, dockerd's session id or None) for ``docker`` or ``podman``,
    on a private daemon / store under ``tmp`` with local/busybox:1 imported."""
    from tests.services.images import import_image

    if kind == "docker":
        from tests.services.docker_daemon import docker_daemon

        with docker_daemon(tmp / "dockerd") as daemon:
            import_image([daemon.client], daemon.env)
            assert daemon.process is not None
            yield daemon.client, daemon.env, daemon.process.pid  # started in a session of its own
        return
    from tests.services.podman import podman_store

    with podman_store(tmp / "podman") as store:
        import_image([store.binary], store.env)
        yield store.binary, store.env, None
