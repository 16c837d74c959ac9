"""`tesp-api serve` (API + engine inside) as a real child process, for end-to-end tests.

Started on 127.0.0.1 and a free port with settings from TESP_API_* variables only; ``kill`` sends
SIGKILL (crash tests), ``stop`` SIGTERM. The process is always stopped by its PID
(tests/services/tesp_process.py, shared with the ``tesp-api local`` launcher).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.services.egress import LOOPBACK_HOSTS
from tests.services.tesp_process import TespProcess


class ServeProcess(TespProcess):
    command = "serve"

    def __init__(self, workdir: Path, pulsar_url: str, **env: str) -> None:
        self.workdir = workdir
        super().__init__(
            workdir,
            workdir / "serve.log",
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
            },
        )
        if "CONTAINER_TYPE" not in env:
            self.env.pop("CONTAINER_TYPE", None)  # the caller's: "auto" would pick podman or docker here
