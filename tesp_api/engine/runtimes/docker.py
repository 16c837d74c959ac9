"""docker and podman: the same ``run`` line (podman is CLI-compatible), least privilege by default.

``--network none`` (unless the operator or an allowed task asks otherwise), ``--cap-drop ALL`` (plus
``runtime.cap_add``), ``--security-opt no-new-privileges``, ``--pids-limit``, ``--user`` when set,
``--rm`` and a fixed name, so that the runner's watchdog can remove the container when Pulsar kills
the job (killing the docker client does not stop the container). The task's env goes through
``--env-file`` (a 0600 file the runner writes and removes), never argv. ``--`` ends the options
before the image (accepted by docker 20.10+ and podman 4.3; the image grammar check at admission is
the main guard). The image's entrypoint is kept; TES's command replaces the image's CMD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun, Hardening, cap_names, ram_bytes
from tesp_api.engine.shell import Concat, EnvFile, Word

SYSTEM_EXITS = {
    125: "the container runtime could not run the container (image not found, pull failed or refused options; "
    "see stderr)",
    126: "the command in the container could not be invoked",
}


@dataclass(frozen=True)
class DockerRuntime:
    binary: str = "docker"
    kind: str = "docker"
    pull_policy: str = "missing"
    extra_args: list[str] = field(default_factory=list)
    hardening: Hardening = field(default_factory=Hardening)
    needs_workdir_mount: bool = False
    env_prefix: str | None = None

    @property
    def system_exit_codes(self) -> Mapping[int, str]:
        return SYSTEM_EXITS

    def command(self, run: ExecutorRun) -> list[Word]:
        h = self.hardening
        argv: list[Word] = [
            self.binary,
            "run",
            "--rm",
            "-i",
            "--name",
            run.name,
            f"--pull={self.pull_policy}",
            "--network",
            run.network,
            "--cap-drop",
            "ALL",
        ]
        if self.kind == "podman":  # podman copies its own HTTP(S)_PROXY (runtime.env) into containers
            argv.append("--http-proxy=false")
        for cap in cap_names(h.cap_add):
            argv += ["--cap-add", cap]
        argv += ["--security-opt", "no-new-privileges"]
        if h.pids_limit:
            argv += ["--pids-limit", str(h.pids_limit)]
        if h.user:
            argv += ["--user", h.user]
        if run.workdir:
            argv += ["--workdir", run.workdir]
        if run.env:
            argv += ["--env-file", EnvFile()]
        for m in run.mounts:
            argv += ["--volume", Concat((m.host, f":{m.container}" + (":ro" if m.read_only else "")))]
        if run.cpu_cores:
            argv += ["--cpus", str(run.cpu_cores)]
        if run.ram_gb:
            argv += ["--memory", str(ram_bytes(run.ram_gb))]
        argv += [*self.extra_args, "--", run.image, *run.command]
        return argv

    def root_command(self, run: ExecutorRun) -> list[Word] | None:
        return None  # the engine's own user model (--user, userns) applies, whoever starts the CLI

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        if self.kind == "podman":
            return [self.binary, "rm", "-f", "-t", "0", run.name]  # podman would wait its 10 s stop timeout
        return [self.binary, "rm", "-f", run.name]  # docker rm -f kills at once


def podman(binary: str = "podman", **kw: object) -> DockerRuntime:
    return DockerRuntime(binary=binary, kind="podman", needs_workdir_mount=True, **kw)  # type: ignore[arg-type]
