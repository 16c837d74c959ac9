"""`tesp-api local` is safe by default (issue 11): its Pulsar listens on a Unix socket in a private
directory, with a random private_token that appears in no argv, environment, log line (even at DEBUG,
where httpx logs every request URL) or job file; and ``--state-dir`` holds the task store.

One real `tesp-api local` process for the module (Pulsar child included), run with DEBUG logging and
Pulsar job directories kept, so that everything it wrote can be searched for the token; and with
``runtime.network = "host"``, the harder case: even an executor with the host's network cannot reach
that Pulsar.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tesp_api.local import free_port
from tests.services.tesp_local import LocalServiceProcess

pytestmark = [pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class Local:
    process: subprocess.Popen[bytes]
    api: str
    state: Path
    cwd: Path
    log_file: Path

    @property
    def pulsar_dir(self) -> Path:
        return self.state / "pulsar"

    @property
    def token(self) -> str:
        for line in (self.pulsar_dir / "app.yml").read_text().splitlines():
            if line.startswith("private_token:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("no private_token in Pulsar's app.yml")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    cwd = tmp_path_factory.mktemp("local-cwd")
    service = LocalServiceProcess(
        cwd,  # settings.toml (absent: defaults + these variables), local.log; the state in cwd/state
        TESP_API_LOGGING__LEVEL="DEBUG",
        TESP_API_PULSAR__KEEP_JOB_DIRECTORIES="true",
        TESP_API_RUNTIME__NETWORK="host",
        CONTAINER_TYPE="bwrap",  # podman or docker may work here, but with no image to run
    )
    service.die_with_parent = True
    service.start(timeout=240)
    assert service.process is not None
    try:
        yield Local(service.process, service.url + "/ga4gh/tes/v1", cwd / "state", cwd, service.log_file)
    finally:
        service.stop(timeout=30)


@pytest.fixture(scope="module")
def finished_task(local: Local) -> dict[str, object]:
    """One task run to its end, its Pulsar job directory kept."""
    task_id = httpx.post(
        f"{local.api}/tasks",
        timeout=10,
        json={
            "inputs": [{"path": "/data/in.txt", "content": "payload\n"}],
            "executors": [{"image": "alpine", "command": ["sh", "-c", "cat /data/in.txt; env"]}],
        },
    ).json()["id"]
    deadline = time.monotonic() + 240
    while (task := httpx.get(f"{local.api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json())[
        "state"
    ] in ("QUEUED", "INITIALIZING", "RUNNING"):
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
    assert task["state"] == "COMPLETE", task
    return dict(task)


def test_pulsar_listens_on_a_unix_socket_in_a_private_directory(local: Local) -> None:
    sock = local.pulsar_dir / "pulsar.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(local.pulsar_dir.stat().st_mode) == 0o700
    assert "host = unix" in (local.pulsar_dir / "server.ini").read_text()


def test_pulsars_token_file_is_readable_by_its_owner_only(local: Local) -> None:
    assert stat.S_IMODE((local.pulsar_dir / "app.yml").stat().st_mode) == 0o600
    assert len(local.token) >= 40  # secrets.token_urlsafe(32)


def test_pulsar_refuses_a_request_without_the_token(local: Local) -> None:
    transport = httpx.HTTPTransport(uds=str(local.pulsar_dir / "pulsar.sock"))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=10) as client:
        assert client.post("/jobs", params={"job_id": "intruder"}).status_code == 401
        assert client.get("/healthz", params={"private_token": local.token}).status_code == 200
    assert not (local.pulsar_dir / "files" / "staging" / "intruder").exists()


def test_the_token_is_in_no_process_argv_or_environment(
    local: Local, finished_task: dict[str, object]
) -> None:
    token = local.token.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue
            assert token not in data, f"token in /proc/{pid}/{what}"


def test_the_token_is_in_no_log_and_no_job_file(local: Local, finished_task: dict[str, object]) -> None:
    token = local.token.encode()
    assert b"HTTP Request" in local.log_file.read_bytes()  # DEBUG: httpx did log its request URLs
    searched = 0
    for root in (local.state, local.cwd):
        for path in root.rglob("*"):
            if path.is_file() and path != local.pulsar_dir / "app.yml":
                searched += 1
                assert token not in path.read_bytes(), f"token in {path}"
    assert searched > 10  # the job's directory (kept), logs, the task store were searched
    assert list((local.pulsar_dir / "files" / "staging").iterdir())  # the kept job directory


def test_the_executor_environment_holds_no_token(local: Local, finished_task: dict[str, object]) -> None:
    logs = finished_task["logs"]
    assert isinstance(logs, list)
    stdout = logs[0]["logs"][0]["stdout"]
    assert stdout.startswith("payload\n")
    assert local.token not in stdout and "PULSAR" not in stdout


ATTACK = r"""
import socket, sys
sock_path, app_yml = sys.argv[1:3]
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(b"POST /jobs?job_id=intruder2 HTTP/1.0\r\n\r\n")
    print("socket:", s.recv(100))
except Exception as exc:
    print("socket:", type(exc).__name__)
try:
    print("app.yml:", len(open(app_yml).read()))
except Exception as exc:
    print("app.yml:", type(exc).__name__)
"""


def run_task(local: Local, task: dict[str, object]) -> dict[str, object]:
    task_id = httpx.post(f"{local.api}/tasks", json=task, timeout=10).json()["id"]
    deadline = time.monotonic() + 240
    while (got := httpx.get(f"{local.api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json())[
        "state"
    ] in ("QUEUED", "INITIALIZING", "RUNNING"):
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    return dict(got)


def test_an_executor_with_the_host_network_cannot_reach_locals_pulsar(local: Local) -> None:
    task = run_task(
        local,
        {
            "inputs": [{"path": "/attack/attack.py", "content": ATTACK}],
            "executors": [
                {
                    "image": "alpine",
                    "command": [
                        "/usr/bin/python3",
                        "/attack/attack.py",
                        str(local.pulsar_dir / "pulsar.sock"),
                        str(local.pulsar_dir / "app.yml"),
                    ],
                }
            ],
        },
    )
    assert task["state"] == "COMPLETE", task
    logs = task["logs"]
    assert isinstance(logs, list)
    assert logs[0]["logs"][0]["stdout"] == "socket: FileNotFoundError\napp.yml: FileNotFoundError\n"
    assert not (local.pulsar_dir / "files" / "staging" / "intruder2").exists()


def test_the_state_dir_holds_the_task_store(local: Local, finished_task: dict[str, object]) -> None:
    assert (local.state / "tasks.sqlite3").is_file()
    assert not (local.cwd / ".tesp-api").exists()  # not the db.sqlite_path default of `serve`


def test_a_second_local_on_the_same_state_dir_stops_at_once(local: Local) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_")}
    env["TESP_API_SETTINGS"] = str(local.cwd / "settings.toml")
    server_ini = (local.pulsar_dir / "server.ini").read_text()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "tesp_api",
            "local",
            "--port",
            str(free_port()),
            "--state-dir",
            str(local.state),
        ],
        cwd=local.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert second.returncode == 2
    assert "another `tesp-api local`" in second.stderr and "Traceback" not in second.stderr
    assert (local.pulsar_dir / "server.ini").read_text() == server_ini  # the first one's Pulsar untouched
    assert httpx.get(f"{local.api}/service-info", timeout=5).status_code == 200
