"""An executor cannot change the host's device nodes.

bwrap's ``--dev /dev`` bind-mounts the host's own /dev/null, /dev/zero, /dev/full, /dev/random,
/dev/urandom and /dev/tty into the sandbox, read-write (they must stay writable). When Pulsar runs as
root, a sandboxed process that is root in its user namespace is still uid 0 on the host, hence the
*owner* of those nodes: ``chmod 600 /dev/null`` needs no capability and changed the host's /dev/null
(seen on this machine: every non-root process on the host then failed to open /dev/null and RabbitMQ's
helpers spun at 100 % CPU). The runner therefore starts bwrap as an unprivileged user when it runs as
root (``runtime.sandbox_user``). Real runner, real bwrap; docker and podman make their own device nodes
(tests/runtimes covers them)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.runner_harness import run_task

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


@pytest.fixture
def host_device_modes() -> Iterator[dict[str, int]]:
    """The host's device modes before the test; restored afterwards whatever the test did."""
    modes = {dev: stat.S_IMODE(os.stat(dev).st_mode) for dev in DEVICES if os.path.exists(dev)}
    try:
        yield modes
    finally:
        for dev, mode in modes.items():
            if stat.S_IMODE(os.stat(dev).st_mode) != mode:
                os.chmod(dev, mode)


def test_an_executor_cannot_chmod_the_hosts_device_nodes(
    tmp_path: Path, host_device_modes: dict[str, int]
) -> None:
    script = "for d in " + " ".join(host_device_modes) + "; do chmod 600 $d; chown 65534 $d; done; echo done"
    _proc, _job, res = run_task(
        tmp_path, {"executors": [{"image": "alpine", "command": ["sh", "-c", script]}]}
    )
    assert res.executor_logs[0].stdout.endswith("done\n")
    after = {dev: stat.S_IMODE(os.stat(dev).st_mode) for dev in host_device_modes}
    assert after == host_device_modes
    assert all(os.stat(dev).st_uid == 0 for dev in host_device_modes)


def test_the_sandbox_can_still_write_to_dev_null(tmp_path: Path) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["sh", "-c", "echo x >/dev/null && echo ok"]}]},
    )
    assert res.executor_logs[0].exit_code == 0 and res.executor_logs[0].stdout == "ok\n"


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the sandbox user is only switched to when the runner runs as root"
)
def test_a_root_runner_runs_the_executor_as_the_sandbox_user_on_the_host(tmp_path: Path) -> None:
    """Not uid 0 mapped into a user namespace (still root on the host), but the host uid 65534 itself."""
    command = ["sh", "-c", "grep -E '^(Uid|Gid|Groups):' /proc/self/status; head -1 /proc/self/uid_map"]
    _proc, _job, res = run_task(tmp_path, {"executors": [{"image": "alpine", "command": command}]})
    lines = dict(line.split(":", 1) for line in res.executor_logs[0].stdout.splitlines()[:3])
    assert lines["Uid"].split() == ["65534"] * 4 and lines["Gid"].split() == ["65534"] * 4
    assert lines["Groups"].split() == []
    inside, outside, _count = res.executor_logs[0].stdout.splitlines()[3].split()
    assert (inside, outside) == ("0", "0")  # the host's own user namespace: 65534 is 65534 there


def test_files_the_executors_write_are_readable_by_the_runner_and_shared(tmp_path: Path) -> None:
    task = {
        "volumes": ["/data"],
        "executors": [
            {
                "image": "alpine",
                "command": ["sh", "-c", "echo one > /data/a && mkdir /data/d && echo two > /data/d/b"],
            },
            {"image": "alpine", "command": ["sh", "-c", "cat /data/a /data/d/b && echo three >> /data/a"]},
        ],
    }
    _proc, job, res = run_task(tmp_path, task)
    assert [lg.exit_code for lg in res.executor_logs.values()] == [0, 0]
    assert res.executor_logs[1].stdout == "one\ntwo\n"
    assert (job / "working" / "fs" / "data" / "a").read_text() == "one\nthree\n"


def test_a_directory_the_runner_makes_for_a_stream_is_the_sandbox_users_too(tmp_path: Path) -> None:
    """stdout into a directory nobody made yet: the runner creates it (as root); a later executor must
    still be able to write beside that file."""
    task = {
        "volumes": ["/data"],
        "executors": [
            {"image": "alpine", "command": ["echo", "one"], "stdout": "/data/new/dir/out.txt"},
            {
                "image": "alpine",
                "command": ["sh", "-c", "echo two > /data/new/dir/more.txt && cat /data/new/dir/*"],
            },
        ],
    }
    _proc, _job, res = run_task(tmp_path, task)
    assert [lg.exit_code for lg in res.executor_logs.values()] == [0, 0]
    assert res.executor_logs[1].stdout == "two\none\n"
