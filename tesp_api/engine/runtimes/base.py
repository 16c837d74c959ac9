"""What every container runtime builder gets and gives.

A runtime is a small pure command builder: from one executor's ``ExecutorRun`` it makes the argv
that runs it (host paths as ``HostPath`` words, see engine/shell.py). Nothing here runs anything,
so each builder is unit-tested on the exact argv it produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tesp_api.engine.shell import HostPath, Word


@dataclass(frozen=True, slots=True)
class Mount:
    host: HostPath
    container: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class ExecutorRun:
    name: str  # unique container name, e.g. tes-<task id>-<executor index>
    image: str
    command: list[str]
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    cpu_cores: int | None = None
    ram_gb: float | None = None


class Runtime(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def needs_workdir_mount(self) -> bool:
        """Whether the executor's workdir must exist before the start (bwrap and apptainer cannot
        create it; docker and podman can, and must not have an empty directory hide the image's)."""

    def command(self, run: ExecutorRun) -> list[Word]:
        """The argv that runs one executor in the foreground, its exit code the executor's."""

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        """A command that removes what survives a SIGKILL of the foreground command (a detached
        container), or None when killing the process group is enough."""


def ram_bytes(ram_gb: float) -> int:
    return max(int(ram_gb * 1024**3), 6 * 1024**2)
