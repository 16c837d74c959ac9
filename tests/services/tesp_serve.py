"""A real ``tesp-api serve`` (uvicorn, SQLite in a temp dir, engine off: no Pulsar needed) on
127.0.0.1 and a free port, for the tests that need a server a browser, schemathesis or an old
client can reach. Stopped by PID at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tesp_api.local import free_port


@contextmanager
def tesp_serve_process(
    home: Path,
    extra_toml: str = "",
    *,
    ready_headers: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``tesp-api serve`` in ``home`` with ``extra_toml`` appended to its settings (and ``env``
    added to its environment: ``TESP_API_*`` variables override the file); yield its URL and process."""
    port = free_port()
    settings = home / "settings.toml"
    settings.write_text(
        f"""
[default.api]
host = "127.0.0.1"
port = {port}
[default.db]
sqlite_path = "{home / "tasks.sqlite3"}"
{extra_toml}
"""
    )
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith("TESP_API") and k != "FASTAPI_PROFILE"
    }
    child_env.update({"TESP_API_SETTINGS": str(settings), "TESP_API_ENGINE__ENABLED": "false", **(env or {})})
    command = [str(Path(sys.executable).parent / "tesp-api"), "serve"]
    log_path = home / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=home, env=child_env, stdout=log_file, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"tesp-api serve exited: {log_path.read_text()}")
                try:
                    answer = httpx.get(f"{url}/ga4gh/tes/v1/service-info", headers=ready_headers, timeout=2)
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tesp-api serve did not start: {log_path.read_text()}")
                time.sleep(0.2)
            yield url, process
        finally:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def running_tesp_serve(
    home: Path, extra_toml: str = "", *, ready_headers: dict[str, str] | None = None
) -> Iterator[str]:
    """:func:`tesp_serve_process`, yielding only the URL."""
    with tesp_serve_process(home, extra_toml, ready_headers=ready_headers) as (url, _):
        yield url
