"""Container runtimes: pick one from the settings (``runtime.type``, or ``CONTAINER_TYPE``).

``auto`` looks for a runtime that works *on this machine*: docker, podman (``<bin> info`` must
succeed: a docker CLI without an engine does not count), apptainer, singularity (``--version``),
and falls back to bubblewrap with a loud warning (no image isolation). The choice is logged with the
reason (which probe succeeded, and why each earlier one failed). Detection assumes Pulsar runs on
this machine (``tesp-api local``); with a remote Pulsar set ``runtime.type`` explicitly.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.runtimes.apptainer import ApptainerRuntime
from tesp_api.engine.runtimes.base import ExecutorRun, Hardening, Mount, Runtime
from tesp_api.engine.runtimes.bwrap import BwrapRuntime
from tesp_api.engine.runtimes.docker import DockerRuntime

log = logging.getLogger(__name__)

__all__ = ["ExecutorRun", "Hardening", "Mount", "Runtime", "build_runtime", "detect_runtime_type"]

BWRAP_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! No working container runtime (docker, podman, apptainer, singularity) found.\n"
    "!! Falling back to bubblewrap: task IMAGES ARE IGNORED and commands run on the host's own\n"
    "!! userland (read-only) in a sandbox. Fine for trying tesp-api; not for real workloads.\n" + "!" * 78
)


def _probe(argv: list[str], env: dict[str, str]) -> str | None:
    """None when the probe works, else why not (for the log)."""
    if not shutil.which(argv[0], path=env.get("PATH")):
        return f"{argv[0]} not found"
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=15, check=False, env=env)  # noqa: S603 - the operator's runtime binary
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{' '.join(argv)}` failed: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        return f"`{' '.join(argv)}` exited {proc.returncode}" + (f": {last[-1][:200]}" if last else "")
    return None


def detect_runtime_type(settings: RuntimeSettings) -> str:
    """The first runtime that really works here (probed with ``runtime.env``, as the job will run it);
    bwrap (with a loud warning) when none does."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **settings.env}
    candidates = [
        ("docker", [settings.docker_bin, "info"]),
        ("podman", [settings.podman_bin, "info"]),
        ("apptainer", [settings.apptainer_bin, "--version"]),
        ("singularity", [settings.singularity_bin, "--version"]),
    ]
    failed: list[str] = []
    for kind, probe in candidates:
        why = _probe(probe, env)
        if why is None:
            log.info(
                "runtime auto-detection: using %s (`%s` works%s)",
                kind,
                " ".join(probe),
                "; not: " + "; ".join(failed) if failed else "",
            )
            return kind
        failed.append(why)
    log.warning("runtime auto-detection: using bwrap (%s)%s", "; ".join(failed), BWRAP_WARNING)
    return "bwrap"


def _uid_gid(value: str) -> tuple[int, int] | None:
    if not value:
        return None
    uid, gid = value.split(":")
    return int(uid), int(gid)


def build_runtime(settings: RuntimeSettings, kind: str | None = None) -> Runtime:
    """``extra_args`` apply to whichever runtime is used; ``docker_args``/``podman_args``/``bwrap_args``/
    ``apptainer_args`` only to their own (so bwrap-only flags never reach podman when auto picks it)."""
    kind = kind or settings.type
    if kind == "auto":
        kind = detect_runtime_type(settings)
    extra = list(settings.extra_args)
    hardening = Hardening(
        cap_add=tuple(settings.cap_add),
        user=settings.user,
        pids_limit=settings.pids_limit,
        bind_host_paths=tuple(settings.bind_host_paths),
        sandbox_user=_uid_gid(settings.sandbox_user),
    )
    if kind == "docker":
        return DockerRuntime(
            binary=settings.docker_bin,
            pull_policy=settings.pull_policy,
            extra_args=extra + settings.docker_args,
            hardening=hardening,
        )
    if kind == "podman":
        # podman 4.3 refuses a --workdir missing from the image ("does not exist on container"; docker
        # creates it), so the workdir is mounted from the job directory like bwrap's (docs/runtimes.md).
        return DockerRuntime(
            binary=settings.podman_bin,
            kind="podman",
            pull_policy=settings.pull_policy,
            extra_args=extra + settings.podman_args,
            hardening=hardening,
            needs_workdir_mount=True,
        )
    if kind in ("apptainer", "singularity"):
        binary = settings.apptainer_bin if kind == "apptainer" else settings.singularity_bin
        return ApptainerRuntime(
            binary=binary, kind=kind, extra_args=extra + settings.apptainer_args, hardening=hardening
        )
    if kind == "bwrap":
        return BwrapRuntime(
            binary=settings.bwrap_bin, extra_args=extra + settings.bwrap_args, hardening=hardening
        )
    raise ValueError(f"unknown runtime type {kind!r}")
