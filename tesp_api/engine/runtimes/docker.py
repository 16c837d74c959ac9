"""docker and podman: the same ``run`` line (podman is CLI-compatible).

The container gets a fixed name so that a watchdog in the job script can ``rm -f`` it when Pulsar
kills the job: killing the docker client does not stop the container (the engine does).
The image's entrypoint is kept; TES's command replaces the image's CMD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun, ram_bytes
from tesp_api.engine.shell import Concat, Word


@dataclass(frozen=True)
class DockerRuntime:
    binary: str = "docker"
    kind: str = "docker"
    pull_policy: str = "missing"
    extra_args: list[str] = field(default_factory=list)
    needs_workdir_mount: bool = False

    def command(self, run: ExecutorRun) -> list[Word]:
        argv: list[Word] = [self.binary, "run", "--rm", "-i", "--name", run.name, f"--pull={self.pull_policy}"]
        if run.workdir:
            argv += ["--workdir", run.workdir]
        for key, value in run.env.items():
            argv += ["--env", f"{key}={value}"]
        for m in run.mounts:
            argv += ["--volume", Concat((m.host, f":{m.container}" + (":ro" if m.read_only else "")))]
        if run.cpu_cores:
            argv += ["--cpus", str(run.cpu_cores)]
        if run.ram_gb:
            argv += ["--memory", str(ram_bytes(run.ram_gb))]
        argv += [*self.extra_args, run.image, *run.command]
        return argv

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return [self.binary, "rm", "-f", run.name]


def podman(binary: str = "podman", **kw: object) -> DockerRuntime:
    return DockerRuntime(binary=binary, kind="podman", **kw)  # type: ignore[arg-type]
