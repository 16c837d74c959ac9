"""The private podman store's stop leaves no conmon behind, even one podman itself lost track of.

conmon (the monitor podman starts for each container) detaches from the podman CLI: killing the
CLI's process group does not reach it. A CLI killed while creating a container (a task cancelled as
its executor starts: the runner's process group is killed) leaves a conmon and a ``runc init`` that
``podman ps -a`` does not list, so ``podman rm -af`` cannot remove them; seen once after
test_env_values_never_appear_on_a_command_line_while_the_executor_runs[podman]. The store's stop kills
its conmons by PID (tests/services/leftovers.py).

Real parts: rootful podman on a private store, local/busybox:1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.services.images import BUSYBOX_IMAGE, ImageUnavailable, import_image
from tests.services.leftovers import alive
from tests.services.podman import PodmanStore, PodmanUnavailable

pytestmark = [pytest.mark.slow]
DEADLINE = 120.0  # a bound on the wait for conmon, not a timed assertion


def test_stop_kills_the_conmon_of_a_container_whose_podman_was_killed_creating_it(tmp_path: Path) -> None:
    store = PodmanStore(tmp_path / "podman")
    try:
        store.start()
        import_image([store.binary], store.env)
    except (PodmanUnavailable, ImageUnavailable) as exc:
        store.stop()
        pytest.skip(f"no podman with local/busybox:1 here: {exc}")
    try:
        cli = subprocess.Popen(
            [store.binary, "run", "--rm", "--name", "tes-killed-0", BUSYBOX_IMAGE, "sleep", "299"],
            env={**os.environ, **store.env},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + DEADLINE
        while not store.conmons():
            assert cli.poll() is None and time.monotonic() < deadline, "podman never started conmon"
            time.sleep(0.001)
        os.killpg(cli.pid, signal.SIGKILL)  # as a cancelled task's runner group is killed
        cli.wait(timeout=30)
        conmons = store.conmons()  # (the daemonized one: the first seen may be its short-lived parent)
        assert conmons  # the CLI's death did not reach it
    finally:
        store.stop()
    assert [pid for pid in conmons if alive(pid)] == []
    assert store.conmons() == []
