"""The JobPlan: every rule about a task's paths, image references, env, wildcards and volumes, in one place.

``build_plan(task)`` is a pure function of the stored task. The API calls it at admission (through
tes/validate.py), so anything that could never run is a 400 naming the field(s); the engine calls it
again on the stored task to get the mounts, streams and outputs it executes, so nothing new is stored
and the two can never disagree. A task the plan accepts never fails later for a path, image or env
reason that was known at create.

Why each rule exists (see docs/architecture.md, "The JobPlan"):

* Container paths are absolute, normalised (no empty or ``.`` segments once normalised), never climb
  with ``..``, and hold no control characters, ``:`` or ``,`` (runtimes split mount specs on them:
  ``-v host:ctr:ro``, ``--mount a=b,c=d``, ``--bind a:b``). Container paths are never URL-decoded, so
  ``%2e%2e`` is a plain name. They are bounded in length (NAME_MAX per component, MAX_PATH_BYTES in
  all) because the host path is the job directory plus this path.
* Every path a task names lives on the host at ``<job working dir>/fs/<path>``; the *mount roots* are
  the smallest set of directories (or single files) that, bind-mounted at the same place, make all
  of them visible to every executor. A directory in SYSTEM_DIRS is never mounted (it would hide the
  image's own system); a file directly in one is mounted on its own. Nothing is ever mounted in
  /proc or /sys (runc refuses it; those are the kernel's).
* ``workdir`` may be ANY absolute path, "/" and system directories included (Pulsar's TES client,
  used by Galaxy, sends ``workdir: "/"`` on every executor): such a workdir is only a chdir, never a
  mount. Other workdirs are listed in ``JobPlan.workdirs`` for runtimes that must create them first.
* Image references follow the Docker/OCI reference grammar (distribution/reference), or one of
  Apptainer's forms; never a leading ``-`` (it would be read as a runtime option), whitespace or
  control characters.
* Env names are ``[A-Za-z_][A-Za-z0-9_]*`` and values carry no NUL, CR or LF: one rule for every
  runtime, because docker/podman env files (one ``K=V`` per line) cannot carry them.
* No string the plan hands to a process (argument, path, env) may hold NUL: execve cannot pass it
  (bash silently drops it from a script: ``a\\0b`` used to run as ``ab``) or a lone surrogate (it has
  no bytes on the host).
* Wildcards (POSIX ``*``, ``?``, ``[``) exist only in output paths; the one implementation of
  has_wildcard / wildcard_base / implicit_prefix / matches lives here.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tesp_api.tes.models import TesExecutor, TesFileType, TesOutput, TesTask

# Directories the container's own system lives in: never hidden by a mount; a file directly in one
# of them is mounted on its own.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/proc",
        "/sbin",
        "/sys",
        "/usr",
        "/var",
        "/run",
        "/opt",
        "/root",
        "/home",
        "/srv",
        "/mnt",
        "/media",
    }
)
# Kernel filesystems: no task path may lie below them (a workdir there is only a chdir).
KERNEL_DIRS = ("/proc", "/sys")
NAME_MAX = 255  # bytes per path component (Linux NAME_MAX)
MAX_PATH_BYTES = 2048  # leaves room under PATH_MAX (4096) for the Pulsar job directory in front
MAX_IMAGE_NAME = 255  # distribution/reference NameTotalLengthMax
# Characters that runtimes use as separators in mount specs.
PATH_SEPARATOR_CHARS = frozenset(":,")
WILDCARD_CHARS = frozenset("*?[")

# --- Docker/OCI reference grammar (github.com/distribution/reference, regexp.go) -----------------
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
OCI_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
# Apptainer library:// and shub:// references: user/collection/container[:tag] (a tag may be sha256.<hex>).
_LIBRARY_REF = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*(?::[\w][\w.-]{0,127})?"
)
_APPTAINER_OCI_SCHEMES = ("docker://", "docker-daemon://", "oras://")
_APPTAINER_LIBRARY_SCHEMES = ("library://", "shub://")
_SIF_SUFFIXES = (".sif", ".simg")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


Problem = tuple[str, str]  # (field path such as "executors[0].image", reason)


class PlanError(ValueError):
    """The task cannot be run; ``problems`` lists every (field path, reason) found, Funnel style.

    ``str(exc)`` is "field: reason; field: reason" (safe to show the submitter: it only repeats
    what they sent)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(f"{where}: {reason}" for where, reason in self.problems))


class OutputKind(StrEnum):
    FILE = "FILE"
    DIRECTORY = "DIRECTORY"
    GLOB = "GLOB"  # a path with wildcards: one upload per matching file


@dataclass(frozen=True, slots=True)
class MountRoot:
    container: str
    is_file: bool  # a single file mounted on its own (its directory is a system directory)


@dataclass(frozen=True, slots=True)
class ExecutorPlan:
    index: int
    image: str
    command: tuple[str, ...]
    workdir: str | None  # normalised; may be "/" or a system directory (then only a chdir)
    env: dict[str, str]
    stdin: str | None  # normalised container paths
    stdout: str | None
    stderr: str | None
    ignore_error: bool


@dataclass(frozen=True, slots=True)
class InputPlacement:
    index: int  # into task.inputs
    path: str  # normalised container path
    type: TesFileType  # FILE or DIRECTORY (a missing type is FILE)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    index: int  # into task.outputs
    path: str  # normalised container path (the pattern, for GLOB)
    kind: OutputKind
    base: str  # what the job lists: the file, the directory, or the glob's fixed directory
    prefix: str | None  # GLOB only: stripped from each match (path_prefix, else implicit_prefix)
    url: str


@dataclass(frozen=True, slots=True)
class JobPlan:
    mount_roots: tuple[MountRoot, ...]  # without workdirs
    # Executor workdirs that are the job's own directories (not "/", a system or kernel directory),
    # in order, without repeats: a runtime that cannot create a workdir makes and mounts these.
    workdirs: tuple[str, ...]
    executors: tuple[ExecutorPlan, ...]
    inputs: tuple[InputPlacement, ...]
    outputs: tuple[OutputPlan, ...]
    volumes: tuple[str, ...]  # normalised
    # mount_roots with the workdirs folded in (outermost roots only)
    mount_roots_with_workdirs: tuple[MountRoot, ...]

    def roots(self, *, with_workdirs: bool) -> tuple[MountRoot, ...]:
        return self.mount_roots_with_workdirs if with_workdirs else self.mount_roots


# --- wildcards: the one implementation ------------------------------------------------------------


def has_wildcard(path: str) -> bool:
    """Whether ``path`` holds a POSIX pattern character (``*``, ``?``, ``[``), the only wildcards TES allows."""
    return any(c in WILDCARD_CHARS for c in path)


def wildcard_base(path: str) -> str:
    """The directory above the first path component holding a wildcard ("/" at the top)."""
    fixed: list[str] = []
    for part in path.split("/"):
        if has_wildcard(part):
            break
        fixed.append(part)
    return normalise("/".join(fixed) or "/")


def implicit_prefix(path: str) -> str:
    """The prefix stripped from a match when ``path_prefix`` is not given (Nextflow sends glob
    outputs without one): wildcard_base ending in "/"."""
    base = wildcard_base(path)
    return base if base.endswith("/") else base + "/"


def normalise_prefix(prefix: str) -> str:
    """``prefix`` with repeated slashes and "." segments removed, keeping a trailing "/" (a prefix
    is a plain string prefix: "/data/o" strips "/data/o" from "/data/out/a")."""
    norm = normalise(prefix)
    return norm + "/" if prefix.endswith("/") and norm != "/" else norm


def effective_prefix(output: TesOutput) -> str:
    """What is stripped from each match of a wildcard output: ``path_prefix`` when given, else
    implicit_prefix of the path; both normalised like the matches (container paths) are."""
    if output.path_prefix:
        return normalise_prefix(output.path_prefix)
    return implicit_prefix(normalise(output.path))


def matches(pattern: str, container_path: str) -> bool:
    """POSIX glob match per path component: ``*`` and ``?`` never cross a "/"."""
    pat_parts = normalise(pattern).split("/")
    path_parts = normalise(container_path).split("/")
    return len(pat_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(name, pat) for name, pat in zip(path_parts, pat_parts, strict=True)
    )


# --- paths --------------------------------------------------------------------------------------


def normalise(path: str) -> str:
    """An absolute path with no empty or "." segments and no trailing "/" ("//a/./b/" -> "/a/b").

    Unlike posixpath.normpath it never keeps a leading "//" and never resolves "..": a path with
    ".." is refused by path_problem, not rewritten."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a container path, or None. The same rule at admission and in the engine."""
    if not path.startswith("/"):
        return f"must be an absolute path inside the container, got {path!r}"
    text = _text_problem(path)
    if text:
        return text
    if _has_control(path):
        return "must not contain control characters"
    if any(c in PATH_SEPARATOR_CHARS for c in path):
        return "must not contain ':' or ',' (container runtimes split mount specifications on them)"
    if ".." in path.split("/"):
        return "must not contain '..' segments"
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part.encode("utf-8")) > NAME_MAX for part in path.split("/")):
        return f"has a component longer than {NAME_MAX} bytes"
    return None


def in_kernel_dir(path: str) -> bool:
    """Whether a normalised path is /proc, /sys or below them."""
    return any(path == k or path.startswith(k + "/") for k in KERNEL_DIRS)


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _ancestors(path: str) -> Iterable[str]:
    """The proper ancestors of a normalised path, nearest first, "/" excluded."""
    while True:
        path = _parent(path)
        if path == "/":
            return
        yield path


# --- images and env -----------------------------------------------------------------------------


def image_problem(image: str) -> str | None:
    """Why ``image`` is not an image reference a runtime can be given safely, or None. Memoised for
    short references (the same few images come again and again; issue 15): a pure function."""
    return _image_problem_cached(image) if len(image) <= _CACHED_IMAGE_CHARS else _image_problem(image)


_CACHED_IMAGE_CHARS = 256


@functools.lru_cache(maxsize=1024)
def _image_problem_cached(image: str) -> str | None:
    return _image_problem(image)


def _image_problem(image: str) -> str | None:
    if not image.strip():
        return "must not be empty"
    text = _text_problem(image)
    if text:
        return text
    if image.startswith("-"):
        return f"{image!r} is not an image reference (it would be read as a runtime option)"
    if any(c.isspace() for c in image) or _has_control(image):
        return "must not contain whitespace or control characters"
    for scheme in _APPTAINER_OCI_SCHEMES:
        if image.startswith(scheme):
            return _oci_problem(image[len(scheme) :], image)
    for scheme in _APPTAINER_LIBRARY_SCHEMES:
        if image.startswith(scheme):
            if _LIBRARY_REF.fullmatch(image[len(scheme) :]):
                return None
            return f"{image!r} is not a valid {scheme} reference"
    if image.startswith("/"):
        if not image.endswith(_SIF_SUFFIXES):
            return f"{image!r}: an image given as a path must be a .sif or .simg file"
        reason = path_problem(image)
        return f"{image!r} {reason}" if reason else None
    return _oci_problem(image, image)


def _oci_problem(reference: str, image: str) -> str | None:
    match = OCI_REFERENCE.fullmatch(reference)
    if match is None:
        return (
            f"{image!r} is not a valid image reference "
            "([registry[:port]/]name[:tag][@digest], lowercase name components)"
        )
    if len(match.group("name")) > MAX_IMAGE_NAME:
        return f"the image name is longer than {MAX_IMAGE_NAME} characters"
    return None


def env_name_problem(name: str) -> str | None:
    if _ENV_NAME.fullmatch(name):
        return None
    return f"invalid variable name {name!r} (letters, digits and '_', not starting with a digit)"


def env_value_problem(value: str) -> str | None:
    text = _text_problem(value)
    if text:
        return text
    if "\n" in value or "\r" in value:
        return "must not contain newlines (env files carry one variable per line)"
    return None


# --- the plan -----------------------------------------------------------------------------------


class _Builder:
    """Collects problems and the paths the job will own, then folds them into mount roots."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.roots: dict[str, bool] = {}  # container path -> is_file
        self.files: dict[str, str] = {}  # path that must be a file -> first field naming it
        self.dirs: list[tuple[str, str]] = []  # (path that must be a directory, field)
        self.file_entries: list[tuple[str, str]] = []  # (file path, field)

    def fail(self, where: str, reason: str) -> None:
        self.problems.append((where, reason))

    def path(self, where: str, value: str) -> str | None:
        """The normalised path, or None (and a problem recorded)."""
        reason = path_problem(value)
        if reason:
            self.fail(where, reason)
            return None
        norm = normalise(value)
        if in_kernel_dir(norm):
            self.fail(
                where,
                f"{norm!r} lies in /{norm.split('/')[1]}, a kernel filesystem that cannot hold task files",
            )
            return None
        return norm

    def add_dir(self, where: str, path: str) -> None:
        if path == "/":
            self.fail(where, "'/' cannot be mounted (only a workdir may be '/')")
            return
        if path in SYSTEM_DIRS:
            self.fail(where, f"{path!r} is a system directory of the container and cannot be mounted")
            return
        self.roots.setdefault(path, False)
        self.dirs.append((path, where))

    def add_file(self, where: str, path: str) -> None:
        if path == "/":
            self.fail(where, "'/' is a directory, not a file")
            return
        if path in SYSTEM_DIRS:
            self.fail(where, f"{path!r} is a system directory of the container, not a file")
            return
        parent = _parent(path)
        if parent in SYSTEM_DIRS:
            self.roots.setdefault(path, True)
        else:
            self.roots.setdefault(parent, False)
        self.files.setdefault(path, where)
        self.file_entries.append((path, where))

    def check_conflicts(self) -> None:
        """A path that must be a file cannot also be a directory, or have anything below it."""
        for path, where in self.dirs:
            if path in self.files:
                self.fail(where, f"{path!r} is a file for {self.files[path]} and cannot be a directory")
        for path, where in self.dirs + self.file_entries:
            for above in _ancestors(path):
                if above in self.files:
                    self.fail(
                        where, f"{path!r} lies below {above!r}, which is a file for {self.files[above]}"
                    )
                    break

    def folded(self, extra_dirs: Iterable[str] = ()) -> tuple[MountRoot, ...]:
        """The outermost roots: a path below another directory root is visible through it."""
        roots = dict(self.roots)
        for path in extra_dirs:
            roots.setdefault(path, False)
        kept: list[MountRoot] = []
        dir_roots: set[str] = set()
        for path in sorted(roots):
            if any(a in dir_roots for a in _ancestors(path)):
                continue
            kept.append(MountRoot(path, roots[path]))
            if not roots[path]:
                dir_roots.add(path)
        return tuple(kept)


def _executor(b: _Builder, i: int, ex: TesExecutor) -> ExecutorPlan:
    where = f"executors[{i}]"
    reason = image_problem(ex.image)
    if reason:
        b.fail(f"{where}.image", reason)
    if not ex.command:
        b.fail(f"{where}.command", "must not be empty")
    elif not ex.command[0]:
        b.fail(f"{where}.command[0]", "must name the program to run")
    for j, arg in enumerate(ex.command):
        reason = _text_problem(arg)
        if reason:
            b.fail(f"{where}.command[{j}]", reason)
    streams: dict[str, str | None] = {}
    for name in ("stdin", "stdout", "stderr"):
        value = getattr(ex, name)
        streams[name] = None
        if value is not None:
            norm = b.path(f"{where}.{name}", value)
            if norm is not None:
                b.add_file(f"{where}.{name}", norm)
                streams[name] = norm
    workdir: str | None = None
    if ex.workdir is not None:
        reason = path_problem(ex.workdir)
        if reason:
            b.fail(f"{where}.workdir", reason)
        else:
            workdir = normalise(ex.workdir)
    env: dict[str, str] = {}
    for key, value in (ex.env or {}).items():
        reason = env_name_problem(key)
        if reason:
            b.fail(f"{where}.env", reason)
            continue
        reason = env_value_problem(value)
        if reason:
            b.fail(f"{where}.env.{key}", reason)
            continue
        env[key] = value
    return ExecutorPlan(
        index=i,
        image=ex.image,
        command=tuple(ex.command),
        workdir=workdir,
        env=env,
        stdin=streams["stdin"],
        stdout=streams["stdout"],
        stderr=streams["stderr"],
        ignore_error=bool(ex.ignore_error),
    )


def _output(b: _Builder, i: int, out: TesOutput) -> OutputPlan | None:
    where = f"outputs[{i}]"
    path = b.path(f"{where}.path", out.path)
    if path is None:
        return None
    if not has_wildcard(path):
        if out.type == TesFileType.DIRECTORY:
            b.add_dir(f"{where}.path", path)
            return OutputPlan(i, path, OutputKind.DIRECTORY, path, None, out.url)
        b.add_file(f"{where}.path", path)
        return OutputPlan(i, path, OutputKind.FILE, path, None, out.url)
    base = wildcard_base(path)
    if base in SYSTEM_DIRS:
        b.fail(
            f"{where}.path",
            f"the wildcard {path!r} must be below a directory of its own, not directly in {base!r}",
        )
        return None
    b.add_dir(f"{where}.path", base)
    prefix = implicit_prefix(path)
    if out.path_prefix:
        reason = path_problem(out.path_prefix)
        if reason is None and has_wildcard(out.path_prefix):
            reason = "must not contain wildcards"
        if reason is None:
            prefix = normalise_prefix(out.path_prefix)
            if not path.startswith(prefix):
                reason = f"must be a prefix of path {out.path!r}"
        if reason:
            b.fail(f"{where}.path_prefix", reason)
            return None
    return OutputPlan(i, path, OutputKind.GLOB, base, prefix, out.url)


def build_plan(task: TesTask) -> JobPlan:
    """The plan for ``task``, or PlanError listing every problem. Pure: the same task, the same plan."""
    b = _Builder()
    if not task.executors:
        b.fail("executors", "at least one executor is required")
    inputs: list[InputPlacement] = []
    input_paths: dict[str, int] = {}
    for i, inp in enumerate(task.inputs or []):
        where = f"inputs[{i}].path"
        path = b.path(where, inp.path)
        if path is None:
            continue
        if path in input_paths:
            b.fail(where, f"{path!r} is also the path of inputs[{input_paths[path]}]")
            continue
        input_paths[path] = i
        kind = TesFileType.DIRECTORY if inp.type == TesFileType.DIRECTORY else TesFileType.FILE
        (b.add_dir if kind == TesFileType.DIRECTORY else b.add_file)(where, path)
        inputs.append(InputPlacement(i, path, kind))
    outputs = [p for i, out in enumerate(task.outputs or []) if (p := _output(b, i, out)) is not None]
    volumes: list[str] = []
    for i, vol in enumerate(task.volumes or []):
        path = b.path(f"volumes[{i}]", vol)
        if path is not None:
            b.add_dir(f"volumes[{i}]", path)
            volumes.append(path)
    executors = [_executor(b, i, ex) for i, ex in enumerate(task.executors)]
    workdirs: list[str] = []
    for ex in executors:
        wd = ex.workdir
        if wd is None or wd in SYSTEM_DIRS or in_kernel_dir(wd) or wd in workdirs:
            continue  # only a chdir: "/" (Galaxy), a system directory, or the kernel's
        workdirs.append(wd)
        b.dirs.append((wd, f"executors[{ex.index}].workdir"))
    b.check_conflicts()
    if b.problems:
        raise PlanError(b.problems)
    return JobPlan(
        mount_roots=b.folded(),
        workdirs=tuple(workdirs),
        executors=tuple(executors),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        volumes=tuple(volumes),
        mount_roots_with_workdirs=b.folded(workdirs),
    )
