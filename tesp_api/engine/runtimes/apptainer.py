"""apptainer and singularity: ``exec`` with a clean environment and only the TES paths bound.

Environment values go in as ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_``) variables of the runtime
process (set by the job runner, never argv): ``--env`` would show them in /proc/*/cmdline and splits
its argument on commas. The prefixed names cannot change the host binary's behaviour (LD_PRELOAD and
the like stay unprefixed only inside the container). ``--no-privs`` drops the capabilities a root user
would keep; no network (``--net --network none``) unless allowed. An image without a scheme is a
Docker image reference, as in TES. Not installable on the build machines: exact-argv tests only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun, Hardening, ram_bytes
from tesp_api.engine.shell import Concat, Word


def image_uri(image: str) -> str:
    if "://" in image or image.startswith("/") or image.endswith((".sif", ".simg")):
        return image
    return "docker://" + image


@dataclass(frozen=True)
class ApptainerRuntime:
    binary: str = "apptainer"
    kind: str = "apptainer"
    extra_args: list[str] = field(default_factory=list)
    hardening: Hardening = field(default_factory=Hardening)
    needs_workdir_mount: bool = True

    @property
    def env_prefix(self) -> str | None:
        return "SINGULARITYENV_" if self.kind == "singularity" else "APPTAINERENV_"

    @property
    def system_exit_codes(self) -> Mapping[int, str]:
        return {}

    def command(self, run: ExecutorRun) -> list[Word]:
        argv: list[Word] = [self.binary, "exec", "--containall", "--cleanenv", "--no-home", "--no-privs"]
        if run.network == "none":
            argv += ["--net", "--network", "none"]
        if run.workdir:
            argv += ["--pwd", run.workdir]
        for m in run.mounts:
            argv += ["--bind", Concat((m.host, f":{m.container}" + (":ro" if m.read_only else "")))]
        if run.cpu_cores:
            argv += ["--cpus", str(run.cpu_cores)]
        if run.ram_gb:
            argv += ["--memory", str(ram_bytes(run.ram_gb))]
        argv += [*self.extra_args, "--", image_uri(run.image), *run.command]
        return argv

    def root_command(self, run: ExecutorRun) -> list[Word] | None:
        return None  # the engine's own user model (--user, userns) applies, whoever starts the CLI

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return None  # runs in the job's process tree: Pulsar's kill reaches it


def singularity(binary: str = "singularity", **kw: object) -> ApptainerRuntime:
    return ApptainerRuntime(binary=binary, kind="singularity", **kw)  # type: ignore[arg-type]
