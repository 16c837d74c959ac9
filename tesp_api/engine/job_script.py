"""The job's spec: everything the fixed runner (engine/runner/tes_runner.py) does, decided here.

A Pulsar job runs ``<python> -I -S tes_runner.py tes-job.json``; the runner is the same file for every
task and this module writes the JSON it reads: the directories to create (mount roots, volumes), the
inputs to place, per executor the runtime's argv (engine/runtimes; host paths as ``{"work": rel}``),
its stdin/stdout/stderr (paths under the job's working directory, opened by the runner without ever
following a link), the task's env (delivered by a 0600 file, an fd or prefixed variables, never argv),
the container cleanup command, and the outputs to list. Nothing from the task is ever evaluated by a
shell: there is none.

Layout and contract (unchanged from the bash job script this replaces): see the runner's docstring and
docs/engine.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.file_mapper import FileMapper, has_wildcard, host_rel, wildcard_base
from tesp_api.engine.runner import RUNNER_NAME, SPEC_NAME
from tesp_api.engine.runtimes.base import ExecutorRun, Network, Runtime
from tesp_api.engine.shell import to_spec
from tesp_api.tes.models import TesFileType, TesTask

SCRIPT_NAME = RUNNER_NAME  # the tool file the command line runs
SPEC_VERSION = 1
META_DIR = "tes-meta"
META_TAR = "tes-meta.tar"
OUT_DIR = "tes-out"  # the runner's snapshot of the outputs (hard links of regular files): fetched from here
ALREADY_RAN_EXIT = 75
SETUP_FAILED_EXIT = 70
# The packed logs also ride on the runner's stdout (which Pulsar's final status carries, up to
# 64 KiB) when small, between these lines, base64 (gzipped first when too big plain): the
# engine then needs no download.
INLINE_META_BEGIN = "TESP-META-BEGIN"
INLINE_META_END = "TESP-META-END"
INLINE_META_MAX = 48 * 1024  # base64 characters; well under Pulsar's 64 KiB status stream cut
NETWORKS: tuple[Network, ...] = ("none", "host", "bridge")

__all__ = [
    "ALREADY_RAN_EXIT",
    "INLINE_META_BEGIN",
    "INLINE_META_END",
    "META_TAR",
    "OUT_DIR",
    "SCRIPT_NAME",
    "SPEC_NAME",
    "PlacedInput",
    "build_job_spec",
    "container_name",
    "executor_runs",
    "input_upload_name",
    "out_rel",
    "task_network",
]


@dataclass(frozen=True, slots=True)
class PlacedInput:
    upload_name: str  # under the job's inputs directory
    container_path: str
    is_archive: bool = False  # a directory input, uploaded as a tar


def input_upload_name(index: int, is_archive: bool) -> str:
    return f"tes-in-{index}" + (".tar" if is_archive else "")


def container_name(task_id: str, index: int) -> str:
    return f"tes-{task_id}-{index}"


def out_rel(fs_rel: str) -> str:
    """Where the runner's snapshot of ``fs/<path>`` is: ``tes-out/<path>``."""
    return OUT_DIR + fs_rel.removeprefix("fs")


def task_network(task: TesTask, settings: RuntimeSettings) -> Network:
    """``runtime.network``, or the task's backend_parameters ``network`` when the operator allows it."""
    if settings.allow_task_network and task.resources and task.resources.backend_parameters:
        wanted = next(
            (str(v).lower() for k, v in task.resources.backend_parameters.items() if k.lower() == "network"),
            None,
        )
        for net in NETWORKS:
            if wanted == net:
                return net
    return settings.network


def executor_runs(
    task: TesTask, task_id: str, mapper: FileMapper, network: Network = "none"
) -> list[ExecutorRun]:
    res = task.resources
    return [
        ExecutorRun(
            name=container_name(task_id, i),
            image=ex.image,
            command=list(ex.command),
            workdir=ex.workdir,
            env=dict(ex.env or {}),
            mounts=mapper.mounts(),
            cpu_cores=res.cpu_cores if res else None,
            ram_gb=res.ram_gb if res else None,
            network=network,
        )
        for i, ex in enumerate(task.executors)
    ]


def _under_a_root(path: str, mapper: FileMapper) -> bool:
    return any(
        not r.is_file and (path == r.container or path.startswith(r.container.rstrip("/") + "/"))
        for r in mapper.roots
    )


def _uid_gid(value: str) -> list[int]:
    uid, gid = value.split(":")
    return [int(uid), int(gid)]


def build_job_spec(
    task: TesTask,
    task_id: str,
    runtime: Runtime,
    mapper: FileMapper,
    inputs: list[PlacedInput],
    *,
    tail_bytes: int,
    settings: RuntimeSettings | None = None,
) -> dict[str, Any]:
    """The runner's spec (JSON-ready). ``settings`` gives the runtime CLI's environment and the network."""
    settings = settings or RuntimeSettings.model_validate({})
    roots = [host_rel(r.container) for r in mapper.roots]
    executors = []
    for ex, run in zip(
        task.executors, executor_runs(task, task_id, mapper, task_network(task, settings)), strict=True
    ):
        cleanup = runtime.cleanup_command(run)
        mkdirs = []
        if ex.workdir and _under_a_root(ex.workdir, mapper):
            # Below a mount: made on the host (podman, bwrap and apptainer do not create it; docker would).
            mkdirs.append(host_rel(ex.workdir))
        executors.append(
            {
                "argv": to_spec(runtime.command(run)),
                "argv_root": to_spec(root_argv) if (root_argv := runtime.root_command(run)) else None,
                "stdin": host_rel(ex.stdin) if ex.stdin else None,
                "stdout": host_rel(ex.stdout) if ex.stdout else None,
                "stderr": host_rel(ex.stderr) if ex.stderr else None,
                "ignore_error": bool(ex.ignore_error),
                "env": run.env,
                "env_prefix": runtime.env_prefix,
                "cleanup": to_spec(cleanup) if cleanup else None,
                "system_exit": {str(code): why for code, why in runtime.system_exit_codes.items()},
                "mkdirs": mkdirs,
                "roots": roots,
            }
        )
    outputs = []
    for i, out in enumerate(task.outputs or []):
        if has_wildcard(out.path):
            outputs.append({"i": i, "rel": host_rel(wildcard_base(out.path)), "dir": True})
        else:
            outputs.append({"i": i, "rel": host_rel(out.path), "dir": out.type == TesFileType.DIRECTORY})
    return {
        "v": SPEC_VERSION,
        "task": task_id,
        "runtime": runtime.kind,
        "tail": int(tail_bytes),
        "env": dict(settings.env),
        # A root runner makes the fs/ tree this user's before the executors run (bwrap's argv_root drops to it).
        "sandbox_user": _uid_gid(settings.sandbox_user) if any(e["argv_root"] for e in executors) else None,
        "dirs": [host_rel(r.container) for r in mapper.roots if not r.is_file],
        "files": [host_rel(r.container) for r in mapper.roots if r.is_file],
        "inputs": [
            {"src": p.upload_name, "dest": host_rel(p.container_path), "tar": p.is_archive} for p in inputs
        ],
        "volumes": [host_rel(v) for v in mapper.plan.volumes],  # normalised: Galaxy sends "/pulsar_staging/"
        "executors": executors,
        "outputs": outputs,
    }


def spec_bytes(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=True).encode()
