"""docker/healthcheck.py, the images' HEALTHCHECK, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deploy.compose import REPO

HEALTHCHECK = REPO / "docker" / "healthcheck.py"


class StatusHandler(BaseHTTPRequestHandler):
    """Answers GET /<status> with that HTTP status."""

    def do_GET(self) -> None:
        status = int(self.path.split("?")[0].strip("/"))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), url, "3"], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("status", [200, 401, 403, 404])
def test_an_answer_below_500_is_healthy(base_url: str, status: int) -> None:
    assert check(f"{base_url}/{status}").returncode == 0


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_unhealthy(base_url: str, status: int) -> None:
    assert check(f"{base_url}/{status}").returncode == 1


def test_nothing_listening_is_unhealthy() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = check(f"http://127.0.0.1:{port}/service-info")
    assert result.returncode == 1
    assert "ConnectionRefused" in result.stderr or "refused" in result.stderr.lower()


def test_the_query_string_is_never_printed(base_url: str) -> None:
    result = check(f"{base_url}/401?private_token=do-not-print-me")
    assert "do-not-print-me" not in result.stdout + result.stderr


def test_a_missing_url_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
