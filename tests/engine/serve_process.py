"""`tesp-api serve` (API + engine inside) as a real child process, for end-to-end tests.

Started on 127.0.0.1 and a free port with settings from TESP_API_* variables only; ``kill`` sends
SIGKILL (crash tests), ``stop`` SIGTERM. The process is always stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tesp_api.local import free_port
from tests.services.egress import LOOPBACK_HOSTS


class ServeProcess:
    def __init__(self, workdir: Path, pulsar_url: str, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "FASTAPI_PROFILE"
        }
        self.env.pop("CONTAINER_TYPE", None)
        self.env.update(
            {
                "TESP_API_SETTINGS": str(workdir / "settings.toml"),  # absent: defaults + environment
                "TESP_API_DB__SQLITE_PATH": str(workdir / "tasks.sqlite3"),
                "TESP_API_PULSAR__URL": pulsar_url,
                "TESP_API_PULSAR__STATUS__POLL_INTERVAL": "0.2",
                "TESP_API_ENGINE__WORK_DIR": str(workdir / "work"),
                "TESP_API_ENGINE__CLAIM_INTERVAL": "0.1",
                "TESP_API_RUNTIME__TYPE": "bwrap",
                # the tests' data servers listen on 127.0.0.1, which the SSRF guard refuses by default
                "TESP_API_TRANSFER__ALLOWED_HOSTS": json.dumps(LOOPBACK_HOSTS),
                **env,
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "serve.log"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tesp_api", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tesp-api serve exited:\n{self.log_file.read_text()}")
            try:
                if httpx.get(f"{self.url}/service-info", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tesp-api serve did not start:\n{self.log_file.read_text()}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs, leases stay taken until they expire."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
