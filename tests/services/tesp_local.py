"""`tesp-api local` (API + engine + embedded store + its own Pulsar child) as a real child process.

What a newcomer or a Galaxy admin trying tesp-api runs: one command. Settings come from TESP_API_*
variables only (any TESP_API_* of the calling environment is dropped first), the API binds 127.0.0.1 on
a free port, the state lives in the test's directory. ``stop`` sends SIGTERM to the PID: `local`
stops its Pulsar child (whole process group) before it exits; SIGKILL after a timeout.
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


class LocalServiceProcess:
    def __init__(self, state_dir: Path, **env: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "FASTAPI_PROFILE"
        }
        self.env.update(
            {
                "TESP_API_SETTINGS": str(state_dir / "settings.toml"),  # absent: defaults + environment
                "TESP_API_PULSAR__STATUS__POLL_INTERVAL": "0.2",
                "TESP_API_ENGINE__CLAIM_INTERVAL": "0.1",
                **env,
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = state_dir / "local.log"

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, timeout: float = 120.0) -> None:  # a loaded CI machine imports slowly
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tesp_api",
                    "local",
                    "--state-dir",
                    str(self.state_dir / "state"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=self.state_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tesp-api local exited:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/service-info", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tesp-api local did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 20.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
