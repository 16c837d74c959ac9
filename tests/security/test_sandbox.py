"""Issue 11: least privilege in the bwrap sandbox, even when Pulsar runs as root (as on these machines):
no effective capabilities, no device nodes, the host's /etc/shadow invisible, and no network unless
the operator allows it (so executors cannot reach Pulsar or the broker on the host's loopback).
Real runner, real bwrap (docker/podman: tests/runtimes/ and tests/security/test_control_plane_runtimes.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesp_api.config.settings import RuntimeSettings
from tests.security.runner_harness import capeff_command, parse_capeff, run_task


def one(
    tmp: Path, command: list[str], settings: RuntimeSettings | None = None, **ex: object
) -> tuple[int, str]:
    _proc, _job, res = run_task(
        tmp, {"executors": [{"image": "alpine", "command": command, **ex}]}, settings=settings
    )
    log = res.executor_logs[0]
    return log.exit_code, (log.stdout or "") + (log.stderr or "")


def test_the_executor_has_no_effective_capabilities(tmp_path: Path) -> None:
    code, out = one(tmp_path, capeff_command())
    assert code == 0 and parse_capeff(out) == 0


def test_cap_add_gives_back_only_what_the_operator_listed(tmp_path: Path) -> None:
    code, out = one(tmp_path, capeff_command(), RuntimeSettings(type="bwrap", cap_add=["CAP_NET_RAW"]))
    assert code == 0 and parse_capeff(out) == 1 << 13  # CAP_NET_RAW is bit 13


def test_mknod_is_refused(tmp_path: Path) -> None:
    code, _out = one(tmp_path, ["mknod", "/tmp/mem", "c", "1", "1"])
    assert code != 0


@pytest.mark.skipif(not Path("/etc/shadow").exists(), reason="this host has no /etc/shadow")
def test_the_hosts_etc_shadow_is_not_readable(tmp_path: Path) -> None:
    code, out = one(tmp_path / "cat", ["cat", "/etc/shadow"])
    assert code != 0 and "root:" not in out
    _code, listing = one(tmp_path / "ls", ["ls", "/etc"])
    assert "shadow" not in listing.split() and "gshadow" not in listing.split()


def test_users_and_name_resolution_files_are_still_there(tmp_path: Path) -> None:
    code, out = one(tmp_path, ["sh", "-c", "id -un; test -r /etc/passwd && test -r /etc/hosts && echo ok"])
    assert code == 0 and out.endswith("ok\n")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on the host's loopback, standing for Pulsar or the broker."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def connect(port: int) -> list[str]:
    return ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED"]


def test_no_network_by_default_the_hosts_loopback_is_unreachable(tmp_path: Path, host_listener: int) -> None:
    code, out = one(tmp_path, connect(host_listener))
    assert code != 0 and "CONNECTED" not in out


def test_network_host_reaches_it_when_the_operator_allows(tmp_path: Path, host_listener: int) -> None:
    """The check above is meaningful: the same command connects with runtime.network = "host"."""
    code, out = one(tmp_path, connect(host_listener), RuntimeSettings(type="bwrap", network="host"))
    assert code == 0 and "CONNECTED" in out


def test_a_task_cannot_ask_for_network_unless_allowed(tmp_path: Path, host_listener: int) -> None:
    task = {
        "executors": [{"image": "a", "command": connect(host_listener)}],
        "resources": {"backend_parameters": {"network": "host"}},
    }
    _p, _j, denied = run_task(tmp_path / "a", task)
    _p, _j, allowed = run_task(
        tmp_path / "b", task, settings=RuntimeSettings(type="bwrap", allow_task_network=True)
    )
    assert "CONNECTED" not in (denied.executor_logs[0].stdout or "")
    assert "CONNECTED" in (allowed.executor_logs[0].stdout or "")


def test_the_sandbox_sees_only_its_own_processes(tmp_path: Path) -> None:
    code, out = one(tmp_path, ["sh", "-c", "ls /proc | grep -c '^[0-9]'"])
    assert code == 0 and int(out.strip()) <= 4
