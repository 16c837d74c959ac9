"""`tesp-api local`: the whole service on one machine with one command.

It starts a local Pulsar child process (pulsar-app, the ``pulsar`` extra) with a configuration
generated in a state directory, then the API with the engine and the embedded store inside, with the
container runtime picked automatically. Pulsar is stopped (its whole process group, gunicorn workers
included) when the service stops.

Pulsar runs any command line it is handed, as its own user: task executors must never reach it. So
Pulsar listens on a Unix socket in a private (0700) directory that no executor sandbox mounts, and
requires a random private_token, new at each start, written only to its own app.yml (0600): never in
an argv, an environment, a log line or a job directory (docs/security.md).

``LocalPulsar`` is also what the test suite uses to start a real Pulsar (tests/services/pulsar.py).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tesp_api.config.settings import RuntimeSettings

log = logging.getLogger(__name__)

SOCKET_NAME = "pulsar.sock"
# sun_path holds 108 bytes with the terminating NUL on Linux; a longer socket path cannot be bound.
MAX_SOCKET_PATH = 107
EXIT_USAGE = 2


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def new_private_token() -> str:
    """A random Pulsar private_token (256 bits, URL-safe: it travels as a query parameter)."""
    return secrets.token_urlsafe(32)


def _pulsar_bin(name: str) -> str:
    """The pulsar-app console script next to this interpreter (a venv) or on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the pulsar extra (pip install 'tesp-api[pulsar]')")
    return found


class LocalPulsar:
    """A Pulsar REST server as a child process, its state under ``state_dir``.

    On TCP (``host``:``port``) by default; with ``unix_socket`` on ``state_dir/pulsar.sock`` (gunicorn's
    ``unix:`` bind), reached through :attr:`uds` with :attr:`url` naming only the Host header.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        private_token: str | None = None,
        num_concurrent_jobs: int = 4,
        message_queue_url: str | None = None,
        unix_socket: bool = False,
        exec_job_scripts: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        # False (always, but for the benchmark's before-figure and the test that shows the race): Pulsar
        # runs through tesp_api.pulsar.serve, which starts each job's command.sh through its interpreter
        # instead of exec'ing it (Pulsar's fork/exec "Text file busy" race; see that module).
        self.exec_job_scripts = exec_job_scripts
        self.host = host
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket else (port or free_port(host))
        self.private_token = private_token
        self.num_concurrent_jobs = num_concurrent_jobs
        self.message_queue_url = message_queue_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uds(self) -> str | None:
        """The socket's path when Pulsar listens on a Unix socket, else None."""
        return str(self.state_dir / SOCKET_NAME) if self.unix_socket else None

    @property
    def url(self) -> str:
        return "http://localhost" if self.unix_socket else f"http://{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """Where it listens, for log lines (never the token)."""
        return f"unix:{self.uds}" if self.uds else self.url

    @property
    def staging_directory(self) -> Path:
        return self.state_dir / "files" / "staging"

    def write_config(self) -> None:
        """server.ini and app.yml; regenerated at each start so a changed port (or token) takes effect."""
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)  # the socket (gunicorn makes it 0777) and app.yml (the token) are reached through here
        for sub in ("files/staging", "files/persisted_data", "dependencies", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # pulsar-serve binds "<host>:<port>" from server.ini: host "unix" and the path as port give
        # gunicorn's "unix:<path>" address.
        host, port = ("unix", str(self.uds)) if self.uds else (self.host, str(self.port))
        (d / "server.ini").write_text(
            f"[server:main]\nhost = {host}\nport = {port}\n\n[app:main]\napp_config = {d / 'app.yml'}\n"
        )
        lines = [
            f"staging_directory: {d / 'files' / 'staging'}",
            f"persistence_directory: {d / 'files' / 'persisted_data'}",
            f"tool_dependency_dir: {d / 'dependencies'}",
            "conda_auto_init: false",
            "conda_auto_install: false",
            "managers:",
            "  _default_:",
            "    type: queued_python",
            f"    num_concurrent_jobs: {self.num_concurrent_jobs}",
        ]
        if self.private_token:
            lines.append(f"private_token: {self.private_token}")
        if self.message_queue_url:
            lines.append(f"message_queue_url: {self.message_queue_url}")
        app_yml = d / "app.yml"
        app_yml.touch(mode=0o600)
        app_yml.chmod(0o600)  # before the token is written, not after
        app_yml.write_text("\n".join(lines) + "\n")

    def client(self, timeout: float = 1.0) -> httpx.Client:
        """A synchronous client for this server (socket or TCP); the token is added per request."""
        from tesp_api.pulsar.rest import install_token_redaction

        install_token_redaction()  # httpx logs request URLs at DEBUG, query string (token) included
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        return httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def serve_command(self) -> list[str]:
        """pulsar-serve, as ``python -m tesp_api.pulsar.serve`` (job scripts read, not exec'd) unless
        ``exec_job_scripts``. Checked here, not in the child: a missing pulsar extra fails at once."""
        serve = _pulsar_bin("pulsar-serve")
        if self.exec_job_scripts:
            return [serve]
        return [sys.executable, "-m", "tesp_api.pulsar.serve"]

    def start(self, timeout: float = 180.0) -> None:  # generous: a loaded host starts Python slowly
        if self.uds:
            Path(self.uds).unlink(missing_ok=True)  # left by a killed run: gunicorn would refuse to bind
        self.write_config()
        env = dict(os.environ)
        env["HOME"] = str(self.state_dir / "home")  # gunicorn writes $HOME/.gunicorn
        logf = open(self.state_dir / "pulsar.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our own argv (pulsar-serve beside this interpreter), no shell
                [*self.serve_command(), str(self.state_dir / "server.ini")],
                cwd=self.state_dir,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills gunicorn workers too
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        params = {"private_token": self.private_token} if self.private_token else {}
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"pulsar-serve exited ({self.process.returncode}); see {self.state_dir}/pulsar.log"
                    )
                try:
                    if client.get("/healthz", params=params).status_code == 200:
                        log.info("local Pulsar ready at %s (state in %s)", self.where, self.state_dir)
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pulsar-serve did not answer within {timeout}s; see {self.state_dir}/pulsar.log")

    def stop(self, timeout: float = 10.0, *, stop_jobs: bool = True) -> None:
        """SIGTERM to the whole process group (gunicorn and its workers), SIGKILL after ``timeout``;
        then (``stop_jobs``) the process groups of the jobs it leaves running (:meth:`stop_jobs`)."""
        proc = self.process
        self.process = None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if stop_jobs:
            self.stop_jobs(timeout)

    def job_process_groups(self) -> dict[str, int]:
        """Job id -> process group of each job of this Pulsar whose processes still run
        (``job_process_groups`` below)."""
        return job_process_groups(self.staging_directory)

    def stop_jobs(self, timeout: float = 10.0) -> list[str]:
        """Stop the jobs Pulsar left running (it starts each in its own process group, so they
        outlive it): SIGTERM to each group (the runner kills its executor and removes its container),
        SIGKILL to what is left after ``timeout``. Returns the job ids stopped. Why stop rather than
        leave them: docs/engine.md, "Crash runs"."""
        groups = self.job_process_groups()
        for job_id, pgid in groups.items():
            log.info("stopping job %s left running by the local Pulsar (process group %d)", job_id, pgid)
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while groups and time.monotonic() < deadline:
            if not any(_group_alive(pgid) for pgid in groups.values()):
                break
            time.sleep(0.1)
        for pgid in groups.values():
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        return sorted(groups)

    def __enter__(self) -> LocalPulsar:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def job_process_groups(staging_directory: Path) -> dict[str, int]:
    """Job id -> process group of each job under ``staging_directory`` whose processes still run.

    Pulsar (queued_python) starts a job with ``setpgrp`` and records the group leader's pid in
    ``<staging>/<job id>/pid``; it removes that file when it sees the job end, so a file is left
    only for a running job or one Pulsar stopped watching (it died). A group counts only when
    /proc shows processes in it and, while its leader lives, the leader's working directory is
    the job's: a pid reused by some other process is never signalled."""
    groups: dict[int, int] = {}  # pgid -> number of processes
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        pgid = int(fields[2])
        groups[pgid] = groups.get(pgid, 0) + 1
    found: dict[str, int] = {}
    if not staging_directory.is_dir():
        return found
    for job_dir in staging_directory.iterdir():
        try:
            pgid = int(json.loads((job_dir / "pid").read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if pgid <= 1 or pgid not in groups:
            continue
        try:
            cwd = os.readlink(f"/proc/{pgid}/cwd")
        except FileNotFoundError:
            cwd = None  # the leader is gone, its group is not: the pid cannot have been reused
        except OSError:
            continue
        if cwd is not None and Path(cwd) != (job_dir / "working").resolve():
            continue
        found[job_dir.name] = pgid
    return found


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalError(Exception):
    """`tesp-api local` cannot start; the message says why and what to do (exit 2, no traceback)."""


def lock_state_dir(state: Path) -> IO[str]:
    """An exclusive lock on the state directory for this process's lifetime: a second `local` on the
    same directory would rewrite the first one's Pulsar config and share its task store."""
    fh = (state / "local.lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise LocalError(
            f"another `tesp-api local` (pid {holder}) is using the state directory {state}: stop it, or give "
            "this one its own --state-dir (and --port)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def check_port_free(host: str, port: int) -> None:
    """Refuse before anything starts (Pulsar, the engine) rather than dying later in uvicorn's bind."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LocalError(f"cannot resolve the API host {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        try:
            probe.bind(address)
        except OSError as exc:
            raise LocalError(
                f"{host}:{port} is already in use ({exc.strerror}): is tesp-api already running? "
                "Use it, stop it, or pick another --port"
            ) from None


def bwrap_visible_paths(runtime: RuntimeSettings) -> list[str]:
    """The host paths a bubblewrap executor sees (read-only): the runtime's own list and the operator's."""
    from tesp_api.engine.runtimes import bwrap

    return [*bwrap.HOST_READ_ONLY, *bwrap.HOST_ETC, *runtime.bind_host_paths]


def check_hidden_from_executors(pulsar_dir: Path, runtime: RuntimeSettings) -> None:
    """Pulsar's token (app.yml) and socket must not lie in a host directory bubblewrap mounts into
    every executor (read-only, but readable and connectable)."""
    if runtime.type not in ("auto", "bwrap"):
        return  # docker, podman and apptainer (--containall) mount only the job's own paths
    for visible in bwrap_visible_paths(runtime):
        if pulsar_dir == Path(visible) or Path(visible) in pulsar_dir.parents:
            raise LocalError(
                f"the state directory {pulsar_dir.parent} is under {visible}, which bubblewrap executors see: "
                "they could read Pulsar's token and reach its socket. Choose another --state-dir "
                "(e.g. under your home directory)"
            )


def _user_set(raw: dict[str, Any], section: str, key: str) -> bool:
    return isinstance(raw.get(section), dict) and raw[section].get(key) not in (None, "")


def local_raw_settings(
    raw: dict[str, Any], args: argparse.Namespace, state: Path, pulsar: LocalPulsar
) -> None:
    """What `local` sets over the user's settings (in place). The state directory holds the task store
    and scratch unless the user set db.sqlite_path / engine.work_dir explicitly."""
    api = raw.setdefault("api", {})
    if args.host:
        api["host"] = args.host
    if args.port is not None:
        api["port"] = args.port
    raw["pulsar"] = {
        **raw.get("pulsar", {}),
        "url": pulsar.url,
        "uds": pulsar.uds,
        "amqp_url": None,
        "servers": [],
        "private_token": pulsar.private_token,
    }
    db = raw.setdefault("db", {})
    if not _user_set(raw, "db", "sqlite_path"):
        db["sqlite_path"] = str(state / "tasks.sqlite3")
    db.pop("mongodb_uri", None)
    engine = raw.setdefault("engine", {})
    engine["enabled"] = True
    if not _user_set(raw, "engine", "work_dir"):
        engine["work_dir"] = str(state / "work")
    runtime = raw.setdefault("runtime", {})
    runtime.setdefault("type", "auto")
    # Pulsar runs on this machine: the job runner uses this very interpreter (unless set).
    runtime.setdefault("runner_python", sys.executable)


def local_pulsar(pulsar_dir: Path, pulsar_port: int | None) -> LocalPulsar:
    """The Pulsar child: on its Unix socket with a new random token; on 127.0.0.1 (token still required)
    with ``--pulsar-port`` or when the socket's path would be too long to bind."""
    use_socket = pulsar_port is None and len(str(pulsar_dir / SOCKET_NAME)) <= MAX_SOCKET_PATH
    return LocalPulsar(
        pulsar_dir, port=pulsar_port, private_token=new_private_token(), unix_socket=use_socket
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tesp-api local", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--settings", metavar="FILE", help="settings file (default: settings.toml, or $TESP_API_SETTINGS)"
    )
    parser.add_argument(
        "--profile", metavar="NAME", help="settings profile (default: $FASTAPI_PROFILE or 'default')"
    )
    parser.add_argument(
        "--state-dir",
        default=".tesp-api",
        metavar="DIR",
        help="where the task store, Pulsar and scratch live (default: .tesp-api); "
        "db.sqlite_path and engine.work_dir, when set, still win",
    )
    parser.add_argument("--host", default=None, help="API host (default: settings api.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="API port (default: settings api.port, 8080)")
    parser.add_argument(
        "--pulsar-port",
        type=int,
        default=None,
        metavar="PORT",
        help="Pulsar on 127.0.0.1:PORT (still with a token) instead of its private Unix socket",
    )
    return parser


def _fail(message: str) -> int:
    print(f"tesp-api local: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Start Pulsar, then the API + engine + embedded store; stop Pulsar on exit."""
    from tesp_api.config.loader import SettingsError, load_raw, validate_settings

    args = build_parser().parse_args(argv)
    state = Path(args.state_dir).resolve()
    pulsar_dir = state / "pulsar"
    pulsar = local_pulsar(pulsar_dir, args.pulsar_port)
    try:
        raw = load_raw(args.settings, args.profile)  # as `serve` reads them: settings.toml, TESP_API_*
        local_raw_settings(raw, args, state, pulsar)
        settings = validate_settings(raw)
        check_hidden_from_executors(pulsar_dir, settings.runtime)
        check_port_free(settings.api.host, settings.api.port)
        state.mkdir(parents=True, exist_ok=True)
        lock = lock_state_dir(state)
    except (SettingsError, LocalError) as exc:
        return _fail(str(exc))
    from tesp_api.service import StartupError, configure_logging, serve

    configure_logging(settings.logging)
    if not pulsar.uds and args.pulsar_port is None:
        log.warning(
            "state directory path too long for a Unix socket: Pulsar listens on %s (token required)",
            pulsar.url,
        )

    def _terminate(signum: int, _frame: object) -> None:
        # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exit that
        # runs the `finally` below (stopping Pulsar) instead of the default instant death.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            pulsar.start()
        except RuntimeError as exc:
            return _fail(f"cannot start the local Pulsar: {exc}")
        log.info(
            "tesp-api local: API on http://%s:%s, Pulsar on %s, runtime %s, state in %s",
            settings.api.host,
            settings.api.port,
            pulsar.where,
            settings.runtime.type,
            state,
        )
        try:
            serve(settings)
        except StartupError as exc:
            return _fail(str(exc))
        return 0
    finally:
        pulsar.stop()
        lock.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
