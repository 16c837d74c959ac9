"""Container runtimes: pick one from the settings (``runtime.type``, or ``CONTAINER_TYPE``).

``auto`` looks for a runtime that works *on this machine*: docker, podman (``<bin> info`` must
succeed: a docker CLI without an engine does not count), apptainer, singularity (``--version``),
and falls back to bubblewrap with a loud warning (no image isolation). Detection assumes Pulsar
runs on this machine (``tesp-api local``); with a remote Pulsar set ``runtime.type`` explicitly.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.runtimes.apptainer import ApptainerRuntime
from tesp_api.engine.runtimes.base import ExecutorRun, Mount, Runtime
from tesp_api.engine.runtimes.bwrap import BwrapRuntime
from tesp_api.engine.runtimes.docker import DockerRuntime

log = logging.getLogger(__name__)

__all__ = ["ExecutorRun", "Mount", "Runtime", "build_runtime", "detect_runtime_type"]

BWRAP_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! No working container runtime (docker, podman, apptainer, singularity) found.\n"
    "!! Falling back to bubblewrap: task IMAGES ARE IGNORED and commands run on the host's own\n"
    "!! userland (read-only) in a sandbox. Fine for trying tesp-api; not for real workloads.\n"
    + "!" * 78
)


def _works(argv: list[str]) -> bool:
    if not shutil.which(argv[0]):
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=15, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def detect_runtime_type(settings: RuntimeSettings) -> str:
    """The first runtime that really works here; bwrap (with a loud warning) when none does."""
    candidates = [
        ("docker", [settings.docker_bin, "info"]),
        ("podman", [settings.podman_bin, "info"]),
        ("apptainer", [settings.apptainer_bin, "--version"]),
        ("singularity", [settings.singularity_bin, "--version"]),
    ]
    for kind, probe in candidates:
        if _works(probe):
            log.info("runtime auto-detection: using %s", kind)
            return kind
    log.warning(BWRAP_WARNING)
    return "bwrap"


def build_runtime(settings: RuntimeSettings, kind: str | None = None) -> Runtime:
    kind = kind or settings.type
    if kind == "auto":
        kind = detect_runtime_type(settings)
    extra = list(settings.extra_args)
    if kind == "docker":
        return DockerRuntime(binary=settings.docker_bin, pull_policy=settings.pull_policy, extra_args=extra)
    if kind == "podman":
        return DockerRuntime(binary=settings.podman_bin, kind="podman", pull_policy=settings.pull_policy,
                             extra_args=extra)
    if kind == "apptainer":
        return ApptainerRuntime(binary=settings.apptainer_bin, extra_args=extra)
    if kind == "singularity":
        return ApptainerRuntime(binary=settings.singularity_bin, kind="singularity", extra_args=extra)
    if kind == "bwrap":
        return BwrapRuntime(binary=settings.bwrap_bin, extra_args=extra)
    raise ValueError(f"unknown runtime type {kind!r}")
