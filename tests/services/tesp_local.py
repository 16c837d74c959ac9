"""`tesp-api local` (API + engine + embedded store + its own Pulsar child) as a real child process.

What a newcomer or a Galaxy admin trying tesp-api runs: one command. Settings come from TESP_API_*
variables only (any TESP_API_* of the calling environment is dropped first), the API binds 127.0.0.1 on
a free port, the state lives in the test's directory. ``stop`` sends SIGTERM to the PID: `local`
stops its Pulsar child (whole process group) before it exits; SIGKILL after a timeout.
"""

from __future__ import annotations

from pathlib import Path

from tests.services.tesp_process import TespProcess


class LocalServiceProcess(TespProcess):
    command = "local"
    stop_timeout = 20.0

    def __init__(self, state_dir: Path, **env: str) -> None:
        self.state_dir = state_dir
        super().__init__(
            state_dir,
            state_dir / "local.log",
            {
                "TESP_API_SETTINGS": str(state_dir / "settings.toml"),  # absent: defaults + environment
                "TESP_API_PULSAR__STATUS__POLL_INTERVAL": "0.2",
                "TESP_API_ENGINE__CLAIM_INTERVAL": "0.1",
                **env,
            },
        )

    def arguments(self) -> list[str]:
        return ["--state-dir", str(self.state_dir / "state")]

    def start(self, timeout: float = 120.0) -> None:  # a loaded CI machine imports slowly
        self.state_dir.mkdir(parents=True, exist_ok=True)
        super().start(timeout)
