"""apptainer and singularity: ``exec`` with a clean environment and only the TES paths bound.

Environment values go in as ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_``) variables through
``env``: ``--env`` splits its argument on commas and would mangle values containing one.
An image without a scheme is a Docker image reference, as in TES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun, ram_bytes
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
    needs_workdir_mount: bool = True

    @property
    def _env_prefix(self) -> str:
        return "SINGULARITYENV_" if self.kind == "singularity" else "APPTAINERENV_"

    def command(self, run: ExecutorRun) -> list[Word]:
        argv: list[Word] = []
        if run.env:
            argv += ["env", *(f"{self._env_prefix}{k}={v}" for k, v in run.env.items())]
        argv += [self.binary, "exec", "--containall", "--cleanenv", "--no-home"]
        if run.workdir:
            argv += ["--pwd", run.workdir]
        for m in run.mounts:
            argv += ["--bind", Concat((m.host, f":{m.container}" + (":ro" if m.read_only else "")))]
        if run.cpu_cores:
            argv += ["--cpus", str(run.cpu_cores)]
        if run.ram_gb:
            argv += ["--memory", str(ram_bytes(run.ram_gb))]
        argv += [*self.extra_args, image_uri(run.image), *run.command]
        return argv

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return None  # runs in the job's process tree: Pulsar's kill reaches it


def singularity(binary: str = "singularity", **kw: object) -> ApptainerRuntime:
    return ApptainerRuntime(binary=binary, kind="singularity", **kw)  # type: ignore[arg-type]
