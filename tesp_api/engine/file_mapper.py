"""TES container paths -> host paths under the job directory (like Funnel's worker/file_mapper).

Every container path a task names (inputs, outputs, volumes, stdin/stdout/stderr, workdir) lives
on the host at ``<job working dir>/fs/<path>``. The mapper picks the *mount roots*: the smallest
set of directories (or single files) that, bind-mounted at the same place in the container, make
all those paths visible and shared by every executor. A path is refused before anything runs when
it is relative, not normalised, climbs with ``..``, or holds characters that runtimes use as
separators in mount specs (``:`` and ``,``) or that cannot be in a file name.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from tesp_api.engine.runtimes.base import Mount
from tesp_api.engine.shell import HostPath
from tesp_api.tes.models import TesFileType, TesTask

FS_DIR = "fs"
# Directories the container's own system lives in: never hidden by a mount; a path directly in
# one of them is mounted on its own.
SYSTEM_DIRS = frozenset(
    {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr",
     "/var", "/run", "/opt", "/root", "/home", "/srv", "/mnt", "/media"}
)
_BAD_CHARS = frozenset(":,\n\r\0")


class PathError(ValueError):
    """A task path that cannot be mapped safely; the task ends in SYSTEM_ERROR saying which."""


def check_path(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise PathError(f"{what}: path {path!r} is not absolute")
    if any(c in _BAD_CHARS for c in path):
        raise PathError(f"{what}: path {path!r} contains a character that is not allowed (: , or a control)")
    if ".." in path.split("/"):
        raise PathError(f"{what}: path {path!r} contains '..'")
    norm = posixpath.normpath(path)
    if norm == "/":
        raise PathError(f"{what}: path '/' cannot be mapped")
    return norm


def has_wildcard(path: str) -> bool:
    return any(c in path for c in "*?[")


def wildcard_base(path: str) -> str:
    """The directory above the first path component holding a wildcard."""
    parts = path.split("/")
    fixed: list[str] = []
    for part in parts:
        if has_wildcard(part):
            break
        fixed.append(part)
    base = "/".join(fixed) or "/"
    return base


@dataclass(frozen=True, slots=True)
class MountRoot:
    container: str
    is_file: bool  # a single file mounted on its own (its directory is a system directory)


def host_rel(container_path: str) -> str:
    """Where a container path lives, relative to the job's working directory."""
    return FS_DIR + container_path


def host_path(container_path: str) -> HostPath:
    return HostPath(host_rel(container_path))


class FileMapper:
    def __init__(self, task: TesTask, *, map_workdirs: bool) -> None:
        self.task = task
        roots: dict[str, bool] = {}  # container path -> is_file

        def add_dir(path: str) -> None:
            roots.setdefault(path, False)

        def add_file(path: str) -> None:
            parent = posixpath.dirname(path)
            if parent in SYSTEM_DIRS:
                roots.setdefault(path, True)
            else:
                add_dir(parent)

        for i, inp in enumerate(task.inputs or []):
            p = check_path(inp.path, f"inputs[{i}]")
            (add_dir if inp.type == TesFileType.DIRECTORY else add_file)(p)
        for i, out in enumerate(task.outputs or []):
            p = check_path(out.path, f"outputs[{i}]")
            if has_wildcard(p):
                base = wildcard_base(p)
                if base in SYSTEM_DIRS:
                    raise PathError(f"outputs[{i}]: wildcard {p!r} must be below a directory of its own")
                add_dir(base)
            elif out.type == TesFileType.DIRECTORY:
                add_dir(p)
            else:
                add_file(p)
        for i, vol in enumerate(task.volumes or []):
            add_dir(check_path(vol, f"volumes[{i}]"))
        for i, ex in enumerate(task.executors):
            for name in ("stdin", "stdout", "stderr"):
                value = getattr(ex, name)
                if value:
                    add_file(check_path(value, f"executors[{i}].{name}"))
            if ex.workdir:
                wd = check_path(ex.workdir, f"executors[{i}].workdir")
                if map_workdirs and wd not in SYSTEM_DIRS:
                    add_dir(wd)
        for p in list(roots):
            if p in SYSTEM_DIRS and not roots[p]:
                raise PathError(f"path {p!r} is a system directory and cannot be mounted")
        # Keep only the outermost roots: a directory below another root is visible through it.
        kept: list[MountRoot] = []
        for path in sorted(roots):
            if any(path.startswith(k.container.rstrip("/") + "/") for k in kept if not k.is_file):
                continue
            kept.append(MountRoot(path, roots[path]))
        self.roots = kept

    def mounts(self) -> list[Mount]:
        return [Mount(host_path(r.container), r.container) for r in self.roots]
