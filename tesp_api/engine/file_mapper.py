"""TES container paths -> host paths under the job directory: a thin engine-side layer over the JobPlan.

Every rule (what a path may be, which directories are mounted, wildcards) lives in tesp_api/tes/jobplan.py
and is applied at admission; this module only adds where a container path lives on the host
(``<job working dir>/fs/<path>``) and the runtime ``Mount`` objects. The names below stay importable
for the job script and the driver.
"""

from __future__ import annotations

from tesp_api.engine.runtimes.base import Mount
from tesp_api.engine.shell import HostPath
from tesp_api.tes.jobplan import (
    SYSTEM_DIRS,
    JobPlan,
    MountRoot,
    build_plan,
    has_wildcard,
    normalise,
    wildcard_base,
)
from tesp_api.tes.jobplan import PlanError as PathError
from tesp_api.tes.models import TesTask

__all__ = [
    "FS_DIR",
    "SYSTEM_DIRS",
    "FileMapper",
    "MountRoot",
    "PathError",
    "has_wildcard",
    "host_path",
    "host_rel",
    "wildcard_base",
]

FS_DIR = "fs"


def host_rel(container_path: str) -> str:
    """Where a container path lives, relative to the job's working directory. The path is normalised
    first, as the plan's paths are: admission accepts ``/out//x/`` and the job must find ``fs/out/x``."""
    return FS_DIR + normalise(container_path)


def host_path(container_path: str) -> HostPath:
    return HostPath(host_rel(container_path))


class FileMapper:
    """The mount roots of ``task``'s plan; raises PathError (the plan's PlanError) for a task the
    plan refuses, which admission already refused: only a task stored before the rule existed gets here."""

    def __init__(self, task: TesTask, *, map_workdirs: bool) -> None:
        self.task = task
        self.plan: JobPlan = build_plan(task)
        self.roots: list[MountRoot] = list(self.plan.roots(with_workdirs=map_workdirs))

    def mounts(self) -> list[Mount]:
        return [Mount(host_path(r.container), r.container) for r in self.roots]
