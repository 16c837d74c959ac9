"""A private Docker daemon (Debian's docker.io ``dockerd``) for one test session.

Everything it makes lives under one directory D: ``--data-root D/data``, ``--exec-root D/exec``,
the socket ``D/docker.sock`` and ``D/dockerd.pid``. It never listens on /var/run/docker.sock, so no
other process on the machine (another test, ``runtime.type = "auto"`` anywhere) can find it; the
runtime CLI inside a Pulsar job reaches it only through ``DOCKER_HOST`` given by a setting.

Nothing may leave the machine: ``--iptables=false --bridge=none`` (no docker0, no NAT rules; the
containers only get their own loopback) and HTTP(S)_PROXY point at a closed loopback port, so a
missing image fails at once ("proxyconnect ... 127.0.0.1:9: connection refused") without any
registry name lookup.

``stop`` removes the containers, stops dockerd by its PID (SIGTERM, SIGKILL after a grace time),
lazily unmounts whatever is still mounted under D and removes D.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.services.die_with_parent import die_with_parent

CLOSED_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, a connect is refused at once

__all__ = [
    "CLOSED_PROXY",
    "DaemonUnavailable",
    "DockerDaemon",
    "docker_client_binary",
    "docker_daemon",
    "mounts_under",
    "unmount_under",
]


class DaemonUnavailable(RuntimeError):
    """dockerd is missing or cannot start here (not root, no cgroups...): the tests that need it skip."""


def docker_client_binary() -> str | None:
    """The docker CLI of the same package as dockerd (Debian docker.io: /usr/bin/docker) when present,
    so that the argv is checked against the CLI the daemon ships with; else the first on PATH."""
    dockerd = shutil.which("dockerd")
    if dockerd:
        pkg_cli = Path("/usr/bin/docker")
        if pkg_cli.exists() and os.access(pkg_cli, os.X_OK):
            return str(pkg_cli)
    return shutil.which("docker")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (deepest first), read from /proc/self/mountinfo."""
    prefix = str(root.resolve())
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                point = line.split()[4].encode().decode("unicode_escape")
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def unmount_under(root: Path) -> None:
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class DockerDaemon:
    """One dockerd with its own data, exec root and socket under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.pidfile = root / "dockerd.pid"
        self.log_path = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = docker_client_binary() or "docker"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """What the docker CLI needs to talk to this daemon (e.g. for ``runtime.env``)."""
        return {"DOCKER_HOST": self.host}

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "HTTPS_PROXY": CLOSED_PROXY, "HTTP_PROXY": CLOSED_PROXY}
        env.pop("DOCKER_CONTEXT", None)
        result = subprocess.run(
            [self.client, *args],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def start(self, timeout: float = 60.0) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DaemonUnavailable("dockerd is not installed (Debian: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise DaemonUnavailable("dockerd needs root here (rootless docker is not set up on this machine)")
        if len(str(self.socket)) > 100:
            raise DaemonUnavailable(f"socket path too long for AF_UNIX: {self.socket}")
        self.root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HTTPS_PROXY": CLOSED_PROXY,
            "HTTP_PROXY": CLOSED_PROXY,
            "https_proxy": CLOSED_PROXY,
            "http_proxy": CLOSED_PROXY,
            "NO_PROXY": "",
            "no_proxy": "",
        }
        argv = [
            dockerd,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "-H",
            self.host,
            "--pidfile",
            str(self.pidfile),
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--bridge=none",
            "--userland-proxy=false",
        ]
        with open(self.log_path, "ab") as logf:
            # die_with_parent: a test run killed from outside runs no finalizer; dockerd then gets SIGTERM
            # (and stops its containerd) instead of living on, orphaned, with its containers
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )  # noqa: PLW1509 - one C call, see die_with_parent.py
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise DaemonUnavailable(f"dockerd exited at start; last log lines: {self.log_tail()}")
            if self.socket.exists() and self.cli("info", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise DaemonUnavailable(f"dockerd did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def container_names(self) -> list[str]:
        out = self.cli("ps", "-a", "--format", "{{.Names}}", check=False).stdout
        return [n for n in out.split() if n]

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False, timeout=10).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=30)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            # its managed containerd shares dockerd's process group (start_new_session above)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.process = None
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def docker_daemon(root: Path) -> Iterator[DockerDaemon]:
    daemon = DockerDaemon(root)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
