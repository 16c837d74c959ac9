"""Executors never reach the service's control plane (issue 11): a task whose executor attacks the
Pulsar it runs on, the way the issue reproduced it, gets nowhere.

The attack (ATTACK below, stdlib Python run by the host's /usr/bin/python3, which bwrap binds):
``POST /jobs?job_id=<victim>`` then ``POST /jobs/<victim>/submit?command_line=id > <marker>``, over TCP
to Pulsar's port or over its Unix socket, and reading Pulsar's app.yml (its token). Each test asserts
the attack failed AND that Pulsar ran nothing: no marker file on the host, no victim job directory,
Pulsar (asked with the token) knows no such job.

Real Pulsar (pulsar-serve), real engine, real bubblewrap. One control test runs the same attack
against an unprotected setup (host network, TCP, no token) and sees it succeed: the defences, not the
test, are what stops it. The AMQP variant: with no network an executor cannot open a connection to
the broker at all; with the host's network it can, which is why the service warns about guest
credentials (asserted here from the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.engine.engine import build_backends
from tesp_api.local import LocalPulsar, new_private_token
from tesp_api.pulsar.control_plane import exposure_warnings
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for

HOST_PYTHON = "/usr/bin/python3"  # the attacker's interpreter: bwrap binds the host's /usr
pytestmark = [pytest.mark.pulsar]


def require_host_python() -> None:
    if not Path(HOST_PYTHON).exists():
        pytest.skip(f"{HOST_PYTHON} (Debian's python3, the attacker's interpreter) is not installed")


ATTACK = r"""
import http.client, json, socket, sys, urllib.parse

target, victim, marker, app_yml = sys.argv[1:5]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def call(method, url):
    try:
        if target.startswith("unix:"):
            conn = UnixConnection(target[len("unix:"):])
        else:
            host, port = target[len("tcp:"):].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(method, url)
        return "HTTP %d" % conn.getresponse().status
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)


def read(path):
    try:
        with open(path) as fh:
            return "read %d bytes" % len(fh.read())
    except Exception as exc:
        return type(exc).__name__


result = {
    "setup": call("POST", "/jobs?" + urllib.parse.urlencode({"job_id": victim})),
    "submit": call("POST", "/jobs/%s/submit?" % victim
                   + urllib.parse.urlencode({"command_line": "id > " + marker})),
    "app_yml": read(app_yml),
}
print(json.dumps(result))
"""


def pulsar_for_test(state: Path, *, token: bool, unix_socket: bool) -> Iterator[LocalPulsar]:
    server = LocalPulsar(state, private_token=new_private_token() if token else None, unix_socket=unix_socket)
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=3.0)


@pytest.fixture(scope="module")
def tcp_open_pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    """TCP on 127.0.0.1, no token: what `tesp-api local` started before issue 11."""
    yield from pulsar_for_test(tmp_path_factory.mktemp("pulsar-open"), token=False, unix_socket=False)


@pytest.fixture(scope="module")
def tcp_token_pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    yield from pulsar_for_test(tmp_path_factory.mktemp("pulsar-token"), token=True, unix_socket=False)


@pytest.fixture(scope="module")
def socket_pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    """A Unix socket and NO token: the socket's invisibility is the only defence left."""
    yield from pulsar_for_test(tmp_path_factory.mktemp("pulsar-sock"), token=False, unix_socket=True)


def attack_settings(pulsar: LocalPulsar, tmp: Path, network: str | None) -> Settings:
    runtime: dict[str, Any] = {"type": "bwrap"}
    if network is not None:
        runtime["network"] = network
    runtime["runner_python"] = sys.executable
    return Settings.model_validate(
        {
            "pulsar": {
                "url": pulsar.url,
                "uds": pulsar.uds,
                "private_token": pulsar.private_token,
                "status": {"poll_interval": 0.2},
                "retries": 1,
                "unreachable_deadline": 5,
            },
            "engine": {"work_dir": str(tmp / "work"), "claim_interval": 0.1, "lease_seconds": 5},
            "runtime": runtime,
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


def target_of(pulsar: LocalPulsar) -> str:
    return f"unix:{pulsar.uds}" if pulsar.uds else f"tcp:{pulsar.host}:{pulsar.port}"


async def run_attack(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp: Path, network: str | None, victim: str, marker: Path
) -> dict[str, str]:
    """Runs ATTACK as a task's executor through a real engine; answers what the attacker saw."""
    require_host_python()
    engine = Engine(attack_settings(pulsar, tmp, network), store)
    await engine.start()
    try:
        task_id = await submit(
            store,
            {
                "inputs": [{"path": "/attack/attack.py", "content": ATTACK}],
                "executors": [
                    {
                        "image": "alpine",
                        "command": [
                            HOST_PYTHON,
                            "/attack/attack.py",
                            target_of(pulsar),
                            victim,
                            str(marker),
                            str(pulsar.state_dir / "app.yml"),
                        ],
                    }
                ],
            },
        )
        record = await wait_for(store, task_id, timeout=240)
    finally:
        await engine.stop()
    assert record.state == TesState.COMPLETE, record.log.system_logs
    seen = dict(json.loads(record.log.logs[0].stdout or "{}"))
    print("attacker saw:", seen)
    return seen


def pulsar_knows(pulsar: LocalPulsar, job_id: str) -> bool:
    """Whether Pulsar has (or had) the job: its directory, or a status other than 'lost'."""
    if (pulsar.staging_directory / job_id).exists():
        return True
    params = {"private_token": pulsar.private_token} if pulsar.private_token else {}
    with pulsar.client(timeout=10) as client:
        status = client.get(f"/jobs/{job_id}/status", params=params).json()
    return bool(status.get("status") != "lost")


@pytest.fixture
def victim_and_marker(tmp_path: Path) -> tuple[str, Path]:
    return f"victim-{uuid.uuid4().hex}", tmp_path / "ESCAPED"


def assert_nothing_ran(pulsar: LocalPulsar, victim: str, marker: Path) -> None:
    assert not marker.exists()
    assert not pulsar_knows(pulsar, victim)


async def test_by_default_an_executor_has_no_network_to_reach_pulsar(
    tcp_open_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, victim_and_marker: tuple[str, Path]
) -> None:
    victim, marker = victim_and_marker
    seen = await run_attack(tcp_open_pulsar, store, tmp_path, None, victim, marker)
    assert not seen["setup"].startswith("HTTP"), seen  # not even a connection
    assert not seen["submit"].startswith("HTTP"), seen
    assert_nothing_ran(tcp_open_pulsar, victim, marker)


async def test_with_the_host_network_the_token_refuses_the_executor(
    tcp_token_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, victim_and_marker: tuple[str, Path]
) -> None:
    victim, marker = victim_and_marker
    seen = await run_attack(tcp_token_pulsar, store, tmp_path, "host", victim, marker)
    assert seen["setup"] == "HTTP 401" and seen["submit"] == "HTTP 401", seen
    assert seen["app_yml"] == "FileNotFoundError", seen  # the token's file is not in the sandbox
    assert_nothing_ran(tcp_token_pulsar, victim, marker)


async def test_with_the_host_network_an_executor_cannot_see_pulsars_unix_socket(
    socket_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, victim_and_marker: tuple[str, Path]
) -> None:
    victim, marker = victim_and_marker
    seen = await run_attack(socket_pulsar, store, tmp_path, "host", victim, marker)
    assert seen["setup"].startswith("FileNotFoundError"), seen
    assert seen["submit"].startswith("FileNotFoundError"), seen
    assert seen["app_yml"] == "FileNotFoundError", seen
    assert_nothing_ran(socket_pulsar, victim, marker)


async def test_control_the_same_attack_on_an_unprotected_pulsar_runs_a_command_on_the_host(
    tcp_open_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, victim_and_marker: tuple[str, Path]
) -> None:
    """Host network, TCP, no token: the attack works, so the tests above test the defences."""
    victim, marker = victim_and_marker
    seen = await run_attack(tcp_open_pulsar, store, tmp_path, "host", victim, marker)
    assert seen["setup"] == "HTTP 200" and seen["submit"] == "HTTP 200", seen
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    with tcp_open_pulsar.client(timeout=10) as client:
        while client.get(f"/jobs/{victim}/status").json().get("complete") != "true":
            assert loop.time() < deadline, "the victim job never finished"
            await asyncio.sleep(0.1)
        client.delete(f"/jobs/{victim}")
    assert "uid=" in marker.read_text()  # `id` ran on the host, outside any sandbox


# ---- AMQP: the broker ------------------------------------------------------------------------------

PROBE = r"""
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connected")
except Exception as exc:
    print("%s: %s" % (type(exc).__name__, exc))
"""


def broker_port() -> int:
    from tests.services.rabbitmq import require_broker

    require_broker()
    with socket.create_connection(("127.0.0.1", 5672), timeout=5):
        pass  # the broker really listens: a failed probe below is the sandbox's doing
    return 5672


async def probe_broker(pulsar: LocalPulsar, store: SqliteTaskStore, tmp: Path, network: str | None) -> str:
    require_host_python()
    engine = Engine(attack_settings(pulsar, tmp, network), store)
    await engine.start()
    try:
        task_id = await submit(
            store,
            {
                "inputs": [{"path": "/attack/probe.py", "content": PROBE}],
                "executors": [
                    {"image": "alpine", "command": [HOST_PYTHON, "/attack/probe.py", str(broker_port())]}
                ],
            },
        )
        record = await wait_for(store, task_id, timeout=240)
    finally:
        await engine.stop()
    assert record.state == TesState.COMPLETE, record.log.system_logs
    return (record.log.logs[0].stdout or "").strip()


@pytest.mark.amqp
async def test_by_default_an_executor_cannot_connect_to_the_broker(
    tcp_token_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path
) -> None:
    seen = await probe_broker(tcp_token_pulsar, store, tmp_path, None)
    assert seen != "connected" and seen.split(":")[0] in {
        "ConnectionRefusedError",
        "OSError",
        "TimeoutError",
    }, seen


@pytest.mark.amqp
async def test_with_the_host_network_an_executor_reaches_the_broker_so_guest_credentials_are_warned_about(
    tcp_token_pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = await probe_broker(tcp_token_pulsar, store, tmp_path, "host")
    assert seen == "connected"  # only the broker's credentials stand between the executor and Pulsar
    settings = Settings.model_validate(
        {
            "pulsar": {"url": None, "amqp_url": "amqp://guest:guest@127.0.0.1:5672//"},
            "engine": {"work_dir": str(tmp_path / "amqp-work")},
            "runtime": {"type": "bwrap", "network": "host"},
        }
    )
    with caplog.at_level(logging.WARNING, logger="tesp_api.pulsar.control_plane"):
        backends = build_backends(settings)  # what serve and worker call at start
    for backend in backends.values():
        close = getattr(backend, "aclose", None)
        if close is not None:
            await close()
    assert "CONTROL PLANE EXPOSED" in caplog.text and "default credentials" in caplog.text
    assert "guest:guest" not in caplog.text  # the URL itself is never logged


# ---- what is warned about at start (no services needed) ---------------------------------------------


def settings_with(pulsar: dict[str, Any], network: str = "host", **runtime: Any) -> Settings:
    return Settings.model_validate(
        {"pulsar": pulsar, "runtime": {"type": "bwrap", "network": network, **runtime}}
    )


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@broker:5672//",
        "amqp://guest:S3cret-long@broker//",
        "amqp://broker:5672//",
        "amqp://tesp@broker//",
        "amqp://tesp:@broker//",
    ],
)
def test_a_broker_with_default_or_no_credentials_is_warned_about(url: str) -> None:
    warnings = exposure_warnings(settings_with({"url": None, "amqp_url": url}))
    assert len(warnings) == 1 and "default credentials" in warnings[0]


def test_a_broker_user_with_a_password_is_not_warned_about() -> None:
    assert (
        exposure_warnings(settings_with({"url": None, "amqp_url": "amqp://tesp:x7Hq2-long@broker//"})) == []
    )


def test_a_rest_pulsar_without_a_token_on_tcp_is_warned_about_when_executors_have_a_network() -> None:
    warnings = exposure_warnings(settings_with({"url": "http://127.0.0.1:8913"}))
    assert len(warnings) == 1 and "without a private_token" in warnings[0]


@pytest.mark.parametrize(
    "pulsar",
    [
        {"url": "http://127.0.0.1:8913", "private_token": "t0ken"},
        {"url": "http://localhost", "uds": "/run/pulsar/pulsar.sock"},
    ],
)
def test_a_token_or_a_unix_socket_silences_the_rest_warning(pulsar: dict[str, Any]) -> None:
    assert exposure_warnings(settings_with(pulsar)) == []


def test_without_executor_network_a_tokenless_tcp_pulsar_is_not_warned_about() -> None:
    assert exposure_warnings(settings_with({"url": "http://127.0.0.1:8913"}, network="none")) == []


def test_tasks_allowed_to_ask_for_a_network_count_as_executors_with_one() -> None:
    warnings = exposure_warnings(
        settings_with({"url": "http://u:pw@127.0.0.1:8913"}, network="none", allow_task_network=True)
    )
    assert len(warnings) == 1 and "runtime.allow_task_network" in warnings[0]
    assert "pw" not in warnings[0] and "http://127.0.0.1:8913" in warnings[0]


def tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes_of_group(pgid: int) -> set[str]:
    import os

    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    return inodes


def test_the_socket_pulsar_listens_on_no_tcp_port(socket_pulsar: LocalPulsar) -> None:
    assert socket_pulsar.process is not None and socket_pulsar.uds
    assert "host = unix" in (socket_pulsar.state_dir / "server.ini").read_text()
    own = socket_inodes_of_group(socket_pulsar.process.pid)  # gunicorn master and workers
    assert own, "no sockets found for the Pulsar processes"
    assert not own & tcp_listening_inodes()
