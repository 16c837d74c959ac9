"""The data-transfer test stack's programs (docker/dts/tools), run outside Docker.

http_server.py and ftp_server.py are started as the containers start them (same programs, same
environment variables, a free port on 127.0.0.1 instead of the container port); MinIO cannot run
here, so seed.py writes to moto_server, a real S3 endpoint (tests/services/s3_server.py).
"""

from __future__ import annotations

import contextlib
import ftplib
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.compose import REPO
from tests.services.s3_server import S3Server, s3_server

TOOLS = REPO / "docker" / "dts" / "tools"
HTTP_TOKEN = "dts-http-token-test"
FTP_USER, FTP_PASSWORD = "tesp", "dts-ftp-password-test"


def seed_module() -> ModuleType:
    """docker/dts/tools/seed.py as a module, for its sample content (it is not a package)."""
    spec = importlib.util.spec_from_file_location("dts_seed", TOOLS / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def program(script: str, env: dict[str, str], port: int) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, str(TOOLS / script)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{script} exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not listen on {port}")
            time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()


@dataclass(frozen=True)
class Stack:
    http_url: str
    http_root: Path
    ftp_port: int
    ftp_root: Path
    s3: S3Server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dts")
    http_port, ftp_port = free_port(), free_port()
    passive = free_port()
    http_env = {
        "DTS_HTTP_TOKEN": HTTP_TOKEN,
        "DTS_HTTP_ROOT": str(root / "http"),
        "DTS_HTTP_HOST": "127.0.0.1",
        "DTS_HTTP_PORT": str(http_port),
    }
    ftp_env = {
        "DTS_FTP_USER": FTP_USER,
        "DTS_FTP_PASSWORD": FTP_PASSWORD,
        "DTS_FTP_ROOT": str(root / "ftp"),
        "DTS_FTP_HOST": "127.0.0.1",
        "DTS_FTP_PORT": str(ftp_port),
        "DTS_FTP_PASSIVE_PORTS": f"{passive}-{passive}",
        "DTS_FTP_AUTH_FAILED_DELAY": "0",
    }
    with (
        program("http_server.py", http_env, http_port),
        program("ftp_server.py", ftp_env, ftp_port),
        s3_server() as s3,
    ):
        yield Stack(f"http://127.0.0.1:{http_port}", root / "http", ftp_port, root / "ftp", s3)


def seed(stack: Stack, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DTS_S3_ENDPOINT": stack.s3.endpoint_url,
        "DTS_S3_ACCESS_KEY": stack.s3.access_key,
        "DTS_S3_SECRET_KEY": stack.s3.secret_key,
        "DTS_S3_BUCKET": "tesp",
        "DTS_FTP_HOST": "127.0.0.1",
        "DTS_FTP_PORT": str(stack.ftp_port),
        "DTS_FTP_USER": FTP_USER,
        "DTS_FTP_PASSWORD": FTP_PASSWORD,
        "DTS_HTTP_URL": stack.http_url,
        "DTS_HTTP_TOKEN": HTTP_TOKEN,
        "DTS_SEED_TIMEOUT": "10",
        **overrides,
    }
    return subprocess.run(
        [sys.executable, str(TOOLS / "seed.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def http(method: str, url: str, data: bytes | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> subprocess.CompletedProcess[str]:
    """One run of the seeding job against the stack (what `dts-seed` does at `up`)."""
    return seed(stack)


def test_seed_puts_the_example_input_on_s3_ftp_and_http(
    stack: Stack, seeded: subprocess.CompletedProcess[str]
) -> None:
    assert seeded.returncode == 0, seeded.stderr
    sample = seed_module().SAMPLE
    assert stack.s3.client().get_object(Bucket="tesp", Key="inputs/hello.txt")["Body"].read() == sample
    assert (stack.ftp_root / "inputs" / "hello.txt").read_bytes() == sample
    assert http("GET", f"{stack.http_url}/inputs/hello.txt") == (200, sample)


def test_seed_can_run_again(stack: Stack, seeded: subprocess.CompletedProcess[str]) -> None:
    """The stack's seed job may be run twice (bucket and directory exist already)."""
    assert seeded.returncode == 0, seeded.stderr
    assert seed(stack).returncode == 0


def test_seed_fails_with_the_reason_when_a_server_refuses_it(stack: Stack) -> None:
    result = seed(stack, DTS_HTTP_TOKEN="wrong", DTS_SEED_TIMEOUT="0")
    assert result.returncode == 1
    assert "http" in result.stderr and "401" in result.stderr


def test_http_server_stores_a_put_body_and_serves_it_back(stack: Stack) -> None:
    assert http("PUT", f"{stack.http_url}/outputs/a/b.txt", b"result\n", HTTP_TOKEN)[0] == 201
    assert (stack.http_root / "outputs" / "a" / "b.txt").read_bytes() == b"result\n"
    assert http("GET", f"{stack.http_url}/outputs/a/b.txt") == (200, b"result\n")


def test_http_server_refuses_writes_without_the_token(stack: Stack) -> None:
    assert http("PUT", f"{stack.http_url}/outputs/x.txt", b"x")[0] == 401
    assert http("PUT", f"{stack.http_url}/outputs/x.txt", b"x", "wrong")[0] == 401
    assert not (stack.http_root / "outputs" / "x.txt").exists()


def test_http_server_refuses_paths_that_leave_its_root(stack: Stack) -> None:
    assert http("GET", f"{stack.http_url}/a/%2e%2e/%2e%2e/etc/passwd")[0] in (400, 404)
    assert http("PUT", f"{stack.http_url}/%2e%2e/escape.txt", b"x", HTTP_TOKEN)[0] in (400, 404)
    assert not (stack.http_root.parent / "escape.txt").exists()


def test_http_server_answers_404_for_a_missing_file(stack: Stack) -> None:
    assert http("GET", f"{stack.http_url}/healthz")[0] == 404


def test_ftp_server_accepts_its_user_for_reading_and_writing(stack: Stack) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", stack.ftp_port, timeout=10)
        ftp.login(FTP_USER, FTP_PASSWORD)
        ftp.storbinary("STOR written.txt", io.BytesIO(b"over ftp\n"))
        received = io.BytesIO()
        ftp.retrbinary("RETR written.txt", received.write)
    assert received.getvalue() == b"over ftp\n"
    assert (stack.ftp_root / "written.txt").read_bytes() == b"over ftp\n"


def test_ftp_server_refuses_a_wrong_password(stack: Stack) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", stack.ftp_port, timeout=10)
        with pytest.raises(ftplib.error_perm):
            ftp.login(FTP_USER, "wrong")


@pytest.mark.parametrize(
    ("script", "variable"), [("http_server.py", "DTS_HTTP_TOKEN"), ("ftp_server.py", "DTS_FTP_PASSWORD")]
)
def test_servers_refuse_to_start_without_their_secret(script: str, variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTS_")}
    env["DTS_FTP_USER"] = FTP_USER
    result = subprocess.run(
        [sys.executable, str(TOOLS / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert variable in result.stderr
