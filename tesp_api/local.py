"""`tesp-api local`: the whole service on one machine with one command.

It starts a local Pulsar child process (pulsar-app, the ``pulsar`` extra) with a configuration
generated in a state directory, then the API with the engine and the embedded store inside, all on
127.0.0.1, with the container runtime picked automatically. Pulsar is stopped (its whole process
group, gunicorn workers included) when the service stops.

``LocalPulsar`` is also what the test suite uses to start a real Pulsar (tests/services/pulsar.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    """A Pulsar REST server as a child process, its state under ``state_dir``."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        private_token: str | None = None,
        num_concurrent_jobs: int = 4,
        message_queue_url: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.private_token = private_token
        self.num_concurrent_jobs = num_concurrent_jobs
        self.message_queue_url = message_queue_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def staging_directory(self) -> Path:
        return self.state_dir / "files" / "staging"

    def write_config(self) -> None:
        """server.ini and app.yml; regenerated at each start so a changed port takes effect."""
        d = self.state_dir
        for sub in ("files/staging", "files/persisted_data", "dependencies", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "server.ini").write_text(
            "[server:main]\n"
            f"host = {self.host}\n"
            f"port = {self.port}\n\n"
            "[app:main]\n"
            f"app_config = {d / 'app.yml'}\n"
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
        (d / "app.yml").write_text("\n".join(lines) + "\n")
        (d / "app.yml").chmod(0o600)

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        env = dict(os.environ)
        env["HOME"] = str(self.state_dir / "home")  # gunicorn writes $HOME/.gunicorn
        logf = open(self.state_dir / "pulsar.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [_pulsar_bin("pulsar-serve"), str(self.state_dir / "server.ini")],
                cwd=self.state_dir,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills gunicorn workers too
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pulsar-serve exited ({self.process.returncode}); see {self.state_dir}/pulsar.log")
            try:
                params = {"private_token": self.private_token} if self.private_token else {}
                if httpx.get(f"{self.url}/healthz", params=params, timeout=1.0).status_code == 200:
                    log.info("local Pulsar ready at %s (state in %s)", self.url, self.state_dir)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pulsar-serve did not answer within {timeout}s; see {self.state_dir}/pulsar.log")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole process group (gunicorn and its workers), SIGKILL after ``timeout``."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            self.process = None
            return
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
        self.process = None

    def __enter__(self) -> LocalPulsar:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Start Pulsar, then the API + engine + embedded store; stop Pulsar on exit."""
    parser = argparse.ArgumentParser(prog="tesp-api local", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", help="settings file (default: settings.toml if present)")
    parser.add_argument("--state-dir", default=".tesp-api", help="where the store, Pulsar and scratch live")
    parser.add_argument("--host", default=None, help="API host (default: settings api.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="API port (default: settings api.port)")
    parser.add_argument("--pulsar-port", type=int, default=None, help="Pulsar port (default: a free one)")
    args = parser.parse_args(argv)

    from tesp_api.config.loader import load_raw
    from tesp_api.config.settings import Settings

    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    raw = load_raw(args.settings)  # settings.toml (if any) and TESP_API_* variables, as `serve` reads them
    pulsar = LocalPulsar(state / "pulsar", port=args.pulsar_port)
    raw.setdefault("api", {})
    if args.host:
        raw["api"]["host"] = args.host
    if args.port is not None:
        raw["api"]["port"] = args.port
    raw["pulsar"] = {**raw.get("pulsar", {}), "url": pulsar.url, "amqp_url": None, "servers": [],
                     "private_token": None}
    raw.setdefault("db", {}).setdefault("sqlite_path", str(state / "tasks.sqlite3"))
    raw["db"].pop("mongodb_uri", None)
    raw.setdefault("engine", {})["enabled"] = True
    raw["engine"].setdefault("work_dir", str(state / "work"))
    raw.setdefault("runtime", {}).setdefault("type", "auto")
    settings = Settings.model_validate(raw)
    from tesp_api.service import configure_logging, serve

    configure_logging(settings.logging)

    def _terminate(signum: int, _frame: object) -> None:
        # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exit that
        # runs the `finally` below (stopping Pulsar) instead of the default instant death.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    pulsar.start()
    try:
        log.info("tesp-api local: API on http://%s:%s, Pulsar on %s, runtime %s",
                 settings.api.host, settings.api.port, pulsar.url, settings.runtime.type)
        serve(settings)
        return 0
    finally:
        pulsar.stop()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
