"""What every container runtime builder gets and gives.

A runtime is a small pure command builder: from one executor's ``ExecutorRun`` it makes the argv
that runs it (host paths as ``HostPath`` words, the task's env as an ``EnvFile``/``ArgsFd`` word or
prefixed variables: see engine/shell.py). Nothing here runs anything, so each builder is
unit-tested on the exact argv it produces; the job runner (engine/runner/tes_runner.py) runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tesp_api.engine.shell import HostPath, Word

Network = Literal["none", "host", "bridge"]


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
    network: Network = "none"


@dataclass(frozen=True)
class Hardening:
    """Least-privilege options every builder applies (from RuntimeSettings; docs/runtimes.md)."""

    cap_add: tuple[str, ...] = ()  # CAP_* names given back after dropping all
    user: str | None = None  # docker/podman --user
    pids_limit: int = 4096  # docker/podman --pids-limit; 0 = none
    bind_host_paths: tuple[str, ...] = ()  # bwrap: extra read-only host paths
    sandbox_user: tuple[int, int] | None = (65534, 65534)  # bwrap under a root runner: run as this uid, gid


class Runtime(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def needs_workdir_mount(self) -> bool:
        """Whether the executor's workdir must exist before the start (bwrap and apptainer cannot
        create it; docker and podman can, and must not have an empty directory hide the image's)."""

    @property
    def env_prefix(self) -> str | None:
        """When set, the task's env goes into the runtime process's environment under this prefix
        (apptainer's APPTAINERENV_); otherwise the argv carries an EnvFile/ArgsFd word."""

    @property
    def system_exit_codes(self) -> Mapping[int, str]:
        """Exit codes of the runtime itself (not of the command): a SYSTEM_ERROR with this reason."""

    def command(self, run: ExecutorRun) -> list[Word]:
        """The argv that runs one executor in the foreground, its exit code the executor's."""

    def root_command(self, run: ExecutorRun) -> list[Word] | None:
        """The argv to use instead when the runner runs as root on the Pulsar host (None: the same one)."""

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        """A command that removes what survives a SIGKILL of the foreground command (a detached
        container), or None when killing the process group is enough."""


def ram_bytes(ram_gb: float) -> int:
    return max(int(ram_gb * 1024**3), 6 * 1024**2)


def cap_names(caps: tuple[str, ...]) -> list[str]:
    """docker/podman take capability names without the CAP_ prefix."""
    return [c.removeprefix("CAP_") for c in caps]
