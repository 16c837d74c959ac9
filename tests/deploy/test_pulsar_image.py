"""The Pulsar image's own files: app.yml, server.ini, entrypoint.sh and its command, run outside Docker.

pulsar-serve is started for real through docker/pulsar/entrypoint.sh with the image's app.yml and
server.ini and the `rest` stage's own CMD (tesp_api/pulsar/serve.py, copied into the image, read at
its repository path), configured by the same PULSAR_CONFIG_OVERRIDE_* variables docker-compose.yaml sets. Only
what cannot exist here is changed: the listen address/port (a free port on 127.0.0.1) and the
image's absolute state paths (/var/lib/pulsar/...), moved into the test's temporary directory.
The Docker check of the entrypoint meets the real docker CLI with no daemon (none runs here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy import dockerfile
from tests.deploy.compose import REPO
from tests.e2e.test_pulsar_text_busy import run_with_script_held_open

PULSAR_DIR = REPO / "docker" / "pulsar"
DOCKERFILE = PULSAR_DIR / "Dockerfile"
LAUNCHER = "tesp_api/pulsar/serve.py"  # copied into the image: Pulsar started through it
ENTRYPOINT = PULSAR_DIR / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
TOKEN = "image-test-token-0123"
VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def entrypoint_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(state),
        "PULSAR_CHECK_DOCKER": "0",
        "PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY": str(tmp_path),
        "PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN": TOKEN,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def image_command(target: str) -> list[str]:
    """The ``target`` stage's CMD, the launcher's image path as the Dockerfile COPYs it."""
    stages = dockerfile.parse(DOCKERFILE)
    cmd = dockerfile.inherited(stages, next(s for s in stages if s.name == target), "CMD")
    assert cmd is not None
    return cmd.words()


def launcher_path_in_image() -> str:
    copies = [
        c.words() for c in next(s for s in dockerfile.parse(DOCKERFILE) if s.name == "base").all("COPY")
    ]
    return next(words[-1] for words in copies if words[:-1] == [LAUNCHER])


def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *(command or ("true",))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rest_command_here(etc: Path) -> list[str]:
    """The rest image's CMD with its image paths (python, the launcher, /etc/pulsar) made local."""
    here = {"python": sys.executable, launcher_path_in_image(): str(REPO / LAUNCHER)}
    return [here.get(w, w.replace("/etc/pulsar/", f"{etc}/")) for w in image_command("rest")]


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real pulsar-serve started by the image's entrypoint with the image's config files."""
    root = tmp_path_factory.mktemp("pulsar-image")
    etc, staging, state = root / "etc", root / "staging", root / "state"
    for directory in (etc, staging, state):
        directory.mkdir()
    shutil.copy(PULSAR_DIR / "app.yml", etc / "app.yml")
    port = free_port()
    server_ini = (PULSAR_DIR / "server.ini").read_text()
    assert "host = 0.0.0.0" in server_ini and "port = 8913" in server_ini
    (etc / "server.ini").write_text(
        server_ini.replace("host = 0.0.0.0", "host = 127.0.0.1").replace("port = 8913", f"port = {port}")
    )
    env = entrypoint_env(
        root,
        PULSAR_CONFIG_DIR=str(etc),
        PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY=str(staging),
        PULSAR_CONFIG_OVERRIDE_PERSISTENCE_DIRECTORY=str(state / "persisted_data"),
        PULSAR_CONFIG_OVERRIDE_TOOL_DEPENDENCY_DIR=str(state / "dependencies"),
    )
    log = open(root / "pulsar.log", "wb")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *rest_command_here(etc)],
        env=env,
        cwd=state,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (root / "pulsar.log").read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline, "pulsar-serve did not listen"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", staging
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


def http_status(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_pulsar_with_the_image_config_refuses_requests_without_the_private_token(
    pulsar: tuple[str, Path],
) -> None:
    base, _ = pulsar
    status, _ = http_status(f"{base}/jobs?job_id=no-token", method="POST")
    assert status == 401


def test_pulsar_with_the_image_config_puts_jobs_in_the_staging_directory_from_the_environment(
    pulsar: tuple[str, Path],
) -> None:
    base, staging = pulsar
    status, body = http_status(f"{base}/jobs?job_id=image-check&private_token={TOKEN}", method="POST")
    assert status == 200
    assert f'"job_directory": "{staging}/image-check"'.encode() in body
    http_status(f"{base}/jobs/image-check?private_token={TOKEN}", method="DELETE")


def test_both_image_variants_start_pulsar_through_the_launcher() -> None:
    launcher = launcher_path_in_image()
    assert image_command("rest") == ["python", launcher, "/etc/pulsar/server.ini"]
    assert image_command("amqp")[:3] == ["python", launcher, "--pulsar-main"]


def test_pulsar_as_the_image_starts_it_runs_a_job_whose_script_is_held_open_for_writing(
    pulsar: tuple[str, Path],
) -> None:
    """The image's Pulsar is immune to Pulsar's "command.sh: Text file busy" race
    (tests/e2e/test_pulsar_text_busy.py: plain pulsar-serve fails this job)."""
    base, staging = pulsar
    with httpx.Client(base_url=base, params={"private_token": TOKEN}, timeout=30.0) as client:
        status = run_with_script_held_open(client, staging, "image-busy")
        client.delete("/jobs/image-busy")
    assert int(status["returncode"]) == 0, status
    assert "ran" in f"{status.get('stdout')}{status.get('job_stdout')}"


def test_the_image_healthcheck_counts_pulsars_401_as_alive(pulsar: tuple[str, Path]) -> None:
    base, _ = pulsar
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"{base}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_entrypoint_runs_the_command_when_everything_is_in_place(tmp_path: Path) -> None:
    result = run_entrypoint(entrypoint_env(tmp_path), "sh", "-c", "echo started")
    assert (result.returncode, result.stdout) == (0, "started\n")


def test_entrypoint_refuses_to_start_without_a_staging_directory(tmp_path: Path) -> None:
    env = entrypoint_env(tmp_path)
    del env["PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY"]
    result = run_entrypoint(env)
    assert result.returncode == 64
    assert "PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY is not set" in result.stderr


def test_entrypoint_refuses_a_relative_staging_directory(tmp_path: Path) -> None:
    result = run_entrypoint(entrypoint_env(tmp_path, PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY="jobs"))
    assert result.returncode == 64
    assert "absolute" in result.stderr


def test_entrypoint_tells_how_to_create_a_missing_staging_directory(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    result = run_entrypoint(entrypoint_env(tmp_path, PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY=str(missing)))
    assert result.returncode == 73
    assert f"sudo install -d -o {os.getuid()}" in result.stderr and str(missing) in result.stderr


def test_entrypoint_refuses_a_rest_pulsar_without_a_private_token(tmp_path: Path) -> None:
    result = run_entrypoint(entrypoint_env(tmp_path, PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN=""))
    assert result.returncode == 64
    assert "set PULSAR_PRIVATE_TOKEN in .env" in result.stderr


def test_entrypoint_lets_an_amqp_pulsar_start_without_a_private_token(tmp_path: Path) -> None:
    env = entrypoint_env(
        tmp_path,
        PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN="",
        PULSAR_CONFIG_OVERRIDE_MESSAGE_QUEUE_URL="amqp://tesp:x@rabbitmq:5672//",
    )
    assert run_entrypoint(env).returncode == 0


def test_entrypoint_explains_an_unreachable_docker_daemon(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    env = entrypoint_env(
        tmp_path,
        PULSAR_CHECK_DOCKER="1",
        DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock",
        PATH=f"{Path(docker).parent}:{VENV_BIN}:/usr/bin:/bin",
    )
    result = run_entrypoint(env)
    assert result.returncode == 69
    assert "set DOCKER_GID in .env" in result.stderr
