"""tesp-api job runner: the ONE fixed program a Pulsar job runs for a TES task.

It is uploaded to Pulsar as a tool file, beside the job's spec (``tes-job.json``), and started as
``<python> -I -S tes_runner.py tes-job.json``. It is standard library only and Python 3.8 compatible
(the Pulsar host's Python), imports nothing from tesp_api, and never evaluates anything from the task:
every decision (mounts, argv per executor, streams, outputs) was taken by the service and is data here.

Layout (the job directory is the parent of the spec's directory)::

    tool_files/tes_runner.py, tool_files/tes-job.json
    inputs/tes-in-<i>[.tar]      uploaded inputs
    working/fs/<container path>  every TES path (what the executors see through their mounts)
    working/tes-meta/            <i>.stdout / <i>.stderr of executors without a mapped stream, env files
    working/tes-meta.tar         per executor <i>.start/.end/.exit/.stdout.tail/.stderr.tail[/.system],
                                 and ``manifest`` (NUL-separated ``index, size, fs/<path>`` records);
                                 printed base64 on stdout between TESP-META-BEGIN/END lines when small
    working/tes-out/<path>       hard links (or copies) of the manifest's regular files: what is fetched
    tes-started/                 made atomically at the start: a second run exits 75 at once

Security: the executors (untrusted) can write below working/fs only. Everything the runner does there on
the host (creating directories, opening stdin/stdout/stderr, listing outputs) walks the path one component
at a time from a directory fd with O_NOFOLLOW, so a symbolic link, FIFO or device planted by an earlier
executor is refused (the executor fails with a system message) and nothing outside the job is touched.
The runtime CLI gets a fixed environment (PATH, a few of Pulsar's own variables, ``env`` of the spec), never
the task's env; the task's env reaches the container through a 0600 file or an fd, never argv.
"""

from __future__ import annotations

import os
import stat
import sys
import time

# Every millisecond here is paid by every job: the runner imports almost nothing (no subprocess, no
# typing, no re; the C halves of json and signal where the interpreter has them).
MYPY = False
if MYPY:  # mypy only; never imported at run time
    import signal
    from typing import Any, ClassVar
else:
    try:
        import _signal as signal  # the C module: `signal` would import enum
    except ImportError:  # pragma: no cover
        import signal

ALREADY_RAN_EXIT = 75
SETUP_FAILED_EXIT = 70
META_DIR = "tes-meta"
META_TAR = "tes-meta.tar"
OUT_DIR = "tes-out"
# The heartbeat (working/tes-alive): a counter rewritten every BEAT seconds while the runner lives (SIGALRM,
# no thread). Pulsar restarted under a running job answers "running" for ever; the service tells a live
# job from a dead one by this counter no longer changing (tesp_api/pulsar/liveness.py).
ALIVE = "tes-alive"
BEAT = 5.0
INLINE_BEGIN = "TESP-META-BEGIN"
INLINE_END = "TESP-META-END"
INLINE_MAX = 48 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables of Pulsar's own (trusted) environment the runtime CLI may need; the task's env never gets here.
PASS_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def env_name_ok(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]*"""
    return name.isascii() and name.isidentifier()


def loads(text: str) -> Any:
    """JSON through the C scanner directly when the interpreter has it (importing ``json`` costs each
    job milliseconds: it compiles regular expressions); the spec is compact JSON written by tesp-api."""
    try:
        import _json

        class Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = float
            memo: ClassVar[dict[str, Any]] = {}

        value, end = _json.make_scanner(Ctx())(text, 0)  # type: ignore[arg-type]
        if end == len(text):
            return value
    except (ImportError, AttributeError, TypeError, StopIteration, ValueError):
        pass
    import json

    return json.loads(text)


def which(name: str, env: dict[str, str]) -> str | None:
    if "/" in name:
        return name
    for d in env.get("PATH", DEFAULT_PATH).split(":"):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


# Python ignores these; a started program must get the default back.
RESET_SIGNALS = tuple(
    getattr(signal, n)
    for n in ("SIGPIPE", "SIGXFSZ", "SIGXFZ", "SIGTERM", "SIGINT", "SIGHUP")
    if hasattr(signal, n)
)


def spawn(argv: list[str], env: dict[str, str], stdio: tuple[int, int, int] | None = None) -> int:
    """Start ``argv`` (posix_spawn: no fork of this process) with stdin/stdout/stderr from ``stdio``
    (default /dev/null); inheritable fds (bwrap's --args fd) are inherited, nothing else."""
    path = which(argv[0], env)
    if path is None:
        raise FileNotFoundError(2, "not found on PATH", argv[0])
    actions: list[tuple[Any, ...]]
    if stdio is None:
        actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    else:
        actions = [(os.POSIX_SPAWN_DUP2, src, dst) for dst, src in enumerate(stdio)]
    return os.posix_spawn(path, argv, env, file_actions=actions, setsigdef=RESET_SIGNALS)


def wait(pid: int) -> int:
    """The exit code, or 128 + the signal that killed it (as a shell reports it)."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Unsafe(Exception):
    """A task path the runner refuses to use (a link, FIFO, device... planted by an executor)."""


class Terminated(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def components(rel: str) -> list[str]:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise Unsafe(f"path {rel!r} is not a plain relative path")
    return parts


def open_dir(root: int, parts: list[str], create: bool, owner: tuple[int, int] | None = None) -> int:
    """An fd of the directory ``parts`` below ``root``, never through a link (each component O_NOFOLLOW;
    missing ones made with mkdir(dir_fd=) when ``create``, and given to ``owner``, the sandbox user, so
    that a later executor can write there too). The caller closes it."""
    fd = os.dup(root)
    try:
        for part in parts:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                made = True
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    made = False
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                if made and owner is not None:
                    os.fchown(nxt, *owner)
            except OSError as exc:
                raise Unsafe(
                    f"{part} is not a directory (a link or another file type?): {exc.strerror}"
                ) from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(root: int, rel: str, write: bool, owner: tuple[int, int] | None = None) -> int:
    """Open ``rel`` (below ``root``) as a regular file without following any link: for writing it is
    created (parents too) and truncated; for reading it must exist. Anything but a regular file is
    refused before it is opened (lstat), and checked again on the fd (fstat)."""
    parts = components(rel)
    parent = open_dir(root, parts[:-1], create=write, owner=owner)
    name = parts[-1]
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise Unsafe(f"{rel} exists and is not a regular file ({_kind(st.st_mode)})")
        except FileNotFoundError:
            if not write:
                raise Unsafe(f"{rel} does not exist") from None
        flags = (os.O_RDWR | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
        try:
            fd = os.open(name, flags | NOFOLLOW, 0o666, dir_fd=parent)
        except OSError as exc:
            raise Unsafe(f"cannot open {rel}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Unsafe(f"{rel} is not a regular file")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(parent)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def tail(fd: int, limit: int) -> bytes:
    size = os.fstat(fd).st_size
    if size <= 0 or limit <= 0:
        return b""
    n = min(size, limit)
    return os.pread(fd, n, size - n)


class Tar:
    """The few small files of tes-meta.tar, in memory; written as a plain ustar archive (no padding to
    10 KiB records, so that it stays small enough to ride on stdout)."""

    def __init__(self) -> None:
        self.members: list[tuple[str, bytes]] = []

    def add(self, name: str, data: bytes) -> None:
        self.members.append((name, data))

    def pack(self) -> bytes:
        out = []
        mtime = int(time.time())
        for name, data in self.members:
            raw = name.encode()
            hdr = bytearray(512)
            hdr[0 : len(raw)] = raw
            for off, width, value in (
                (100, 8, 0o644),
                (108, 8, 0),
                (116, 8, 0),
                (124, 12, len(data)),
                (136, 12, mtime),
            ):
                field = f"{value:0{width - 1}o}".encode() + b"\0"
                hdr[off : off + width] = field
            hdr[148:156] = b" " * 8
            hdr[156:157] = b"0"
            hdr[257:265] = b"ustar\x0000"
            hdr[148:156] = (f"{sum(hdr):06o}").encode() + b"\0 "
            out.append(bytes(hdr))
            out.append(data)
            if len(data) % 512:
                out.append(b"\0" * (512 - len(data) % 512))
        out.append(b"\0" * 1024)
        return b"".join(out)


class Runner:
    def __init__(self, spec_path: str) -> None:
        try:  # it holds the task's env: readable by Pulsar's user only
            os.chmod(spec_path, 0o600)
        except OSError:
            pass
        with open(spec_path, "rb") as fh:
            self.spec = loads(fh.read().decode("utf-8"))
        if self.spec.get("v") != 1:
            raise SystemExit("tesp-api runner: unknown spec version {!r}".format(self.spec.get("v")))
        tool_dir = os.path.dirname(os.path.abspath(spec_path))
        self.job = os.path.dirname(tool_dir)
        self.work = os.path.join(self.job, "working")
        self.meta = os.path.join(self.work, META_DIR)
        self.tar = Tar()
        self.tail_bytes = int(self.spec.get("tail", 65536))
        self.env = self._runtime_env()
        # Root runner + bwrap: the executors run as this uid/gid (argv_root), so what they must write is theirs.
        user = self.spec.get("sandbox_user")
        self.drop = (int(user[0]), int(user[1])) if user and os.geteuid() == 0 else None
        self.pid = 0  # the running executor's runtime process
        self.current: dict[str, Any] | None = None
        self.watchdog = -1
        self.work_fd = -1
        self.beats = 0

    def _runtime_env(self) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH}
        for key in PASS_ENV:
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(self.spec.get("env") or {})
        return env

    # ---- the job ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            os.mkdir(os.path.join(self.job, "tes-started"))
        except FileExistsError:
            sys.stderr.write("tesp-api: this job has already run; not running it again\n")
            return ALREADY_RAN_EXIT
        os.umask(0o022)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGALRM, self._beat)
        self._beat(0, None)
        signal.setitimer(signal.ITIMER_REAL, BEAT, BEAT)  # not inherited by the processes it starts
        try:
            try:
                os.makedirs(self.meta, exist_ok=True)
                self.work_fd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._setup()
            except (OSError, Unsafe) as exc:
                sys.stderr.write(f"tesp-api: cannot set up the job: {exc}\n")
                return SETUP_FAILED_EXIT
            rc = 0
            for i, ex in enumerate(self.spec.get("executors") or []):
                code = self._executor(i, ex)
                if code != 0 and not ex.get("ignore_error"):
                    rc = code
                    break
            self._manifest()
            self._pack()
            signal.setitimer(signal.ITIMER_REAL, 0, 0)  # no beat may overwrite the last word
            self._alive(b"done\n")  # finished: its logs are in tes-meta.tar
            return rc
        except Terminated as term:
            self._kill_current()
            return 128 + term.signum
        finally:
            # Stop the beats before returning: Python's finalization puts SIGALRM back to its default
            # action (terminate) while the timer still runs, and a beat landing then killed the
            # runner with 142 after the job was done (seen under load in bench_engine's bursts).
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: object) -> None:
        raise Terminated(signum)

    def _beat(self, signum: int, frame: object) -> None:
        """One heartbeat: the counter (from 1; the service uploads the file as "0" with the job)."""
        self.beats += 1
        self._alive(str(self.beats).encode() + b"\n")

    def _alive(self, data: bytes) -> None:
        """tes-alive, replaced atomically (a reader never sees a half-written file)."""
        path = os.path.join(self.work, ALIVE)
        try:
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(path + ".tmp", path)
        except OSError:
            pass

    def _kill_current(self) -> None:
        """SIGTERM/SIGINT/SIGHUP: kill the executor's processes and remove its container, now."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
        if self.current is not None and self.current.get("cleanup"):
            self._cleanup(self.current["cleanup"], self.env)
        if os.getpgrp() == os.getpid():  # our own process group (as Pulsar starts us): take it all down
            os.killpg(os.getpgrp(), signal.SIGTERM)

    def _setup(self) -> None:
        for rel in self.spec.get("dirs") or []:
            os.close(open_dir(self.work_fd, components(rel), create=True))
        for rel in self.spec.get("files") or []:
            os.close(open_file(self.work_fd, rel, write=True))
        for inp in self.spec.get("inputs") or []:
            src = os.path.join(self.job, "inputs", inp["src"])
            if inp.get("tar"):
                os.close(open_dir(self.work_fd, components(inp["dest"]), create=True))
                extract(src, os.path.join(self.work, inp["dest"]))
            else:
                parts = components(inp["dest"])
                parent = open_dir(self.work_fd, parts[:-1], create=True)
                try:
                    os.replace(src, parts[-1], dst_dir_fd=parent)
                finally:
                    os.close(parent)
        for rel in self.spec.get("volumes") or []:
            os.close(open_dir(self.work_fd, components(rel), create=True))
        if self.drop is not None:
            self._give_tree(os.path.join(self.work, "fs"))

    def _give_tree(self, top: str) -> None:
        """Make everything under ``top`` the sandbox user's. Only before the first executor, when the runner
        alone has written there (no link can have been planted): lchown never follows one anyway."""
        if not os.path.isdir(top) or os.path.islink(top):
            return
        assert self.drop is not None
        uid, gid = self.drop
        os.lchown(top, uid, gid)
        for root, dirs, files in os.walk(top, followlinks=False):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)

    def _give(self, fd: int) -> None:
        if self.drop is not None:
            os.fchown(fd, *self.drop)

    # ---- one executor ---------------------------------------------------------------------------
    def _executor(self, i: int, ex: dict[str, Any]) -> int:
        self.tar.add(f"{i}.start", (now() + "\n").encode())
        fds: list[int] = []
        env_file = None
        rc = -1
        try:
            try:
                for rel in ex.get("mkdirs") or []:
                    made = open_dir(self.work_fd, components(rel), create=True, owner=self.drop)
                    try:
                        self._give(made)
                    finally:
                        os.close(made)
                for rel in ex.get("roots") or []:  # mount sources must still be what the runner made
                    check_root(self.work_fd, rel)
                stdin = (
                    open_file(self.work_fd, ex["stdin"], write=False)
                    if ex.get("stdin")
                    else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                )
                fds.append(stdin)
                out = self._stream(ex.get("stdout"), f"{i}.stdout")
                fds.append(out)
                if ex.get("stderr") and ex.get("stderr") == ex.get("stdout"):
                    err = out
                else:
                    err = self._stream(ex.get("stderr"), f"{i}.stderr")
                    fds.append(err)
                argv, proc_env, pass_fds, env_file = self._argv(i, ex)
                fds.extend(pass_fds)
            except Unsafe as exc:
                self._system(i, "task", f"executor {i} was not started: {exc}")
                rc = 1
                return rc
            except OSError as exc:
                self._system(i, "runtime", f"executor {i} was not started: {exc}")
                rc = 1
                return rc
            self.current = ex
            if ex.get("cleanup"):
                self._watch(i, ex)
            try:
                for fd in pass_fds:
                    os.set_inheritable(fd, True)
                self.pid = spawn(argv, proc_env, (stdin, out, err))
            except OSError as exc:
                self._system(i, "runtime", f"cannot start {argv[0]}: {exc.strerror or exc}")
                self._unwatch(i)
                rc = 127
                return rc
            for fd in pass_fds:  # the child has its copy; ours would keep a pipe/file alive
                os.close(fd)
                fds.remove(fd)
            rc = wait(self.pid)
            self.pid = 0
            self._unwatch(i)
            self.current = None
            message = (ex.get("system_exit") or {}).get(str(rc))
            if message:
                self._system(i, "runtime", f"executor {i}: {message} (exit code {rc})")
            self.tar.add(f"{i}.stdout.tail", tail(out, self.tail_bytes))
            self.tar.add(f"{i}.stderr.tail", tail(err, self.tail_bytes) if err != out else b"")
            return rc
        finally:
            if env_file is not None:
                try:
                    os.unlink(env_file)
                except OSError:
                    pass
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.tar.add(f"{i}.end", (now() + "\n").encode())
            self.tar.add(f"{i}.exit", f"{rc}\n".encode())

    def _stream(self, rel: object, default: str) -> int:
        if rel:
            fd = open_file(self.work_fd, str(rel), write=True, owner=self.drop)
            self._give(fd)  # a later executor may append to it
            return fd
        return os.open(
            os.path.join(self.meta, default), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
        )

    def _system(self, i: int, kind: str, message: str) -> None:
        self.tar.add(f"{i}.system", f"{kind}\n{message}".encode("utf-8", "surrogateescape"))

    def _argv(self, i: int, ex: dict[str, Any]) -> tuple[list[str], dict[str, str], list[int], str | None]:
        """The runtime command with host paths resolved and the task env delivered its runtime's way:
        a 0600 env file (docker/podman ``--env-file``), an fd of NUL-separated ``--setenv`` args (bwrap
        ``--args``), or prefixed variables of the runtime process (apptainer)."""
        env = ex.get("env") or {}
        proc_env = dict(self.env)
        pass_fds: list[int] = []
        env_file = None
        argv: list[str] = []
        for key, value in env.items():
            if not env_name_ok(key):
                raise Unsafe(f"env name {key!r} is not a plain variable name")
            if any(c in value for c in "\0\n\r"):
                raise Unsafe(f"env {key}: a value with a line break or NUL cannot be passed")
        words: list[Any] = ex["argv_root"] if self.drop is not None and ex.get("argv_root") else ex["argv"]
        for word in words:
            if isinstance(word, str):
                argv.append(word)
            elif "work" in word:
                argv.append(os.path.join(self.work, word["work"]))
            elif "join" in word:
                argv.append(
                    "".join(
                        p if isinstance(p, str) else os.path.join(self.work, p["work"]) for p in word["join"]
                    )
                )
            elif "env_file" in word:
                env_file = os.path.join(self.meta, f"{i}.env")
                fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(
                        "".join("{}={}\n".format(*kv) for kv in env.items()).encode(
                            "utf-8", "surrogateescape"
                        )
                    )
                argv.append(env_file)
            elif "args_fd" in word:
                fd = self._args_fd(i, [a for k, v in env.items() for a in ("--setenv", k, v)])
                pass_fds.append(fd)
                argv.append(str(fd))
            else:
                raise Unsafe(f"unknown argv word {word!r}")
        prefix = ex.get("env_prefix")
        if prefix:
            for key, value in env.items():
                proc_env[prefix + key] = value
        return argv, proc_env, pass_fds, env_file

    def _args_fd(self, i: int, args: list[str]) -> int:
        """An unlinked 0600 file holding NUL-separated args, open for reading: bwrap reads ``--args FD``."""
        path = os.path.join(self.meta, f"{i}.args")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.unlink(path)
            data = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in args)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- containers that outlive a SIGKILL ---------------------------------------------------------
    def _watch(self, i: int, ex: dict[str, Any]) -> None:
        """Pulsar's cancel SIGKILLs the job's process tree, and a docker/podman container is not in it: a
        detached watchdog (double fork, own session: outside the tree) waits on a pipe from this process
        and, when the pipe closes with an executor still marked running, removes its container at once."""
        if self.watchdog < 0:
            self.watchdog = start_watchdog(self.spec.get("executors") or [], self.env)
        _send(self.watchdog, f"s {i}\n")

    def _unwatch(self, i: int) -> None:
        if self.watchdog >= 0:
            _send(self.watchdog, f"e {i}\n")

    @staticmethod
    def _cleanup(argv: list[str], env: dict[str, str]) -> None:
        try:
            wait(spawn(argv, env))
        except OSError:
            pass

    # ---- outputs ---------------------------------------------------------------------------------
    def _manifest(self) -> None:
        """List the outputs (regular files only, walking with O_NOFOLLOW: links are never listed or
        followed) and put each into working/tes-out/ as a hard link (a copy if linking fails), from
        where they are fetched or pushed: nothing a container left can redirect Pulsar either."""
        records = []
        seen: set[str] = set()
        try:
            os.mkdir(OUT_DIR, 0o700, dir_fd=self.work_fd)
        except FileExistsError:
            pass
        out_fd = open_dir(self.work_fd, [OUT_DIR], create=False)
        try:
            for out in self.spec.get("outputs") or []:
                try:
                    for rel, size in self._list(out["rel"], bool(out.get("dir"))):
                        records.append(
                            b"%d\0%d\0%s\0" % (int(out["i"]), size, rel.encode("utf-8", "surrogateescape"))
                        )
                        if rel not in seen:
                            seen.add(rel)
                            self._snapshot(rel, out_fd)
                except (Unsafe, OSError):
                    continue  # missing or unsafe: not listed (the service says "not found")
        finally:
            os.close(out_fd)
        self.tar.add("manifest", b"".join(records))

    def _list(self, rel: str, is_dir: bool) -> list[tuple[str, int]]:
        parts = components(rel)
        if not is_dir:
            parent = open_dir(self.work_fd, parts[:-1], create=False)
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
            return [(rel, st.st_size)] if stat.S_ISREG(st.st_mode) else []
        found = []
        stack = [(open_dir(self.work_fd, parts, create=False), rel)]
        while stack:
            fd, prefix = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    names = sorted(
                        (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                        for e in entries
                    )
                for name, is_subdir, is_file in names:
                    if is_file:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            found.append((prefix + "/" + name, st.st_size))
                    elif is_subdir:
                        try:
                            stack.append((os.open(name, DIR_FLAGS, dir_fd=fd), prefix + "/" + name))
                        except OSError:
                            pass
            finally:
                os.close(fd)
        return found

    def _snapshot(self, rel: str, out_fd: int) -> None:
        parts = components(rel)[1:]  # fs/<path> -> tes-out/<path>
        src_parent = open_dir(self.work_fd, components(rel)[:-1], create=False)
        dst_parent = open_dir(out_fd, parts[:-1], create=True)
        try:
            try:
                os.link(
                    parts[-1], parts[-1], src_dir_fd=src_parent, dst_dir_fd=dst_parent, follow_symlinks=False
                )
            except FileExistsError:
                pass
            except OSError:
                src = os.open(parts[-1], os.O_RDONLY | NOFOLLOW, dir_fd=src_parent)
                try:
                    if not stat.S_ISREG(os.fstat(src).st_mode):
                        return
                    os.set_blocking(src, True)
                    dst = os.open(
                        parts[-1],
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                        0o644,
                        dir_fd=dst_parent,
                    )
                    try:
                        while True:
                            chunk = os.read(src, 1 << 20)
                            if not chunk:
                                break
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(dst, view) :]
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
        finally:
            os.close(src_parent)
            os.close(dst_parent)

    def _pack(self) -> None:
        data = self.tar.pack()
        with open(os.path.join(self.work, META_TAR), "wb") as fh:
            fh.write(data)
        import binascii

        inline = binascii.b2a_base64(data, newline=False)
        if len(inline) > INLINE_MAX:
            import zlib

            packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
            inline = binascii.b2a_base64(packer.compress(data) + packer.flush(), newline=False)
        if len(inline) <= INLINE_MAX:
            sys.stdout.write(f"{INLINE_BEGIN}\n{inline.decode()}\n{INLINE_END}\n")
            sys.stdout.flush()


def check_root(root: int, rel: str) -> None:
    """A mount source (a directory, or a file mounted on its own) must not have become a link."""
    parts = components(rel)
    parent = open_dir(root, parts[:-1], create=False)
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise Unsafe(f"mount source {rel} is {_kind(st.st_mode)}")


def extract(archive: str, dest: str) -> None:
    """A directory input (a tar made by tesp-api from the downloaded directory): no member may be a link,
    a device, absolute or climb with '..' (the tarfile 'data' filter where Python has it, else a check)."""
    import tarfile

    uid, gid = os.getuid(), os.getgid()
    try:
        with tarfile.open(archive, "r:") as tar:
            data_filter = getattr(tarfile, "data_filter", None)
            if data_filter is not None:

                def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
                    checked: tarfile.TarInfo = data_filter(member, path)
                    return checked.replace(uid=uid, gid=gid, uname="", gname="", deep=False)

                tar.extractall(dest, filter=keep)  # noqa: S202 - the 'data' filter checks every member
                return
            members = []
            for member in tar.getmembers():
                name = member.name
                if (
                    member.issym()
                    or member.islnk()
                    or member.isdev()
                    or name.startswith("/")
                    or ".." in name.split("/")
                ):
                    raise Unsafe(f"input archive member {name!r} is a link, a device, absolute or has '..'")
                if not (member.isfile() or member.isdir()):
                    continue
                member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
                member.mode &= 0o755
                members.append(member)
            tar.extractall(dest, members=members)  # noqa: S202 - members checked above: no link, device, '..'
    except tarfile.TarError as exc:
        raise Unsafe(f"input archive {os.path.basename(archive)} refused: {exc}") from None


def _send(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode())
    except OSError:
        pass


def start_watchdog(executors: list[dict[str, Any]], env: dict[str, str]) -> int:
    """Fork the detached watchdog; returns the write end of its pipe (closed when this process dies)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 65536)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            running: set[int] = set()
            buf = b""
            while True:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    what, _, index = line.decode().partition(" ")
                    (running.add if what == "s" else running.discard)(int(index))
            for k in sorted(running):
                cleanup = executors[k].get("cleanup")
                if cleanup:
                    Runner._cleanup(cleanup, env)
        finally:
            os._exit(0)
    os.close(read_end)
    os.waitpid(pid, 0)
    return write_end


def main(argv: list[str]) -> int:
    for fd in (0, 1, 2):  # started with one closed? Keep the numbers taken, so no file we open gets them
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    if len(argv) != 2:
        sys.stderr.write("usage: tes_runner.py <tes-job.json>\n")
        return 2
    return Runner(argv[1]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
