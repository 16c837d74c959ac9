"""One ``python -m tesp_api <command>`` child process on 127.0.0.1 and a free port, for end-to-end tests.

``serve`` (tests/engine/serve_process.py) and ``local`` (tests/services/tesp_local.py) are started,
waited for and stopped alike: an environment without the caller's ``TESP_API_*`` (settings come from
the variables each launcher sets), the output appended to ``log_file``, ready when ``GET
/service-info`` answers 200 (an early exit or the timeout raise with the log); ``stop`` sends SIGTERM
to the PID and SIGKILL after ``stop_timeout``, ``kill`` SIGKILL at once (crash tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tesp_api.local import free_port
from tests.services.die_with_parent import die_with_parent

__all__ = ["TespProcess", "clean_env"]


def clean_env() -> dict[str, str]:
    """This process's environment without any tesp-api setting (nor FastAPI's profile)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "FASTAPI_PROFILE"}


class TespProcess:
    command = "serve"  # the tesp_api subcommand
    stop_timeout = 15.0  # seconds from SIGTERM to SIGKILL
    # The child gets SIGTERM when the thread that started it dies (PR_SET_PDEATHSIG: a test run killed
    # from outside runs no finalizer). Only for a process started from the test's main thread.
    die_with_parent = False
    serves_http = True  # False (``worker``): no --host/--port, and started is all there is to wait for

    def __init__(self, cwd: Path, log_file: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.log_file = log_file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**clean_env(), **env}
        self.process: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        """The subcommand's arguments after ``--host``/``--port``."""
        return []

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        argv = [sys.executable, "-m", "tesp_api", self.command, *self.arguments()]
        if self.serves_http:
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )  # noqa: PLW1509 - one C call, see die_with_parent.py
        if not self.serves_http:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tesp-api {self.command} exited:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/service-info", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tesp-api {self.command} did not start:\n{self.log_text()}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs (leases stay taken until they expire)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float | None = None) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
