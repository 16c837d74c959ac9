"""Podman (Debian's podman 4.3) with storage and configuration private to one test session.

Everything goes through environment variables, so the very same ``env`` can be handed to the
runtime CLI inside a Pulsar job (``runtime.env``), which Pulsar starts with a clean environment:

* ``CONTAINERS_CONF``: ``default_ulimits`` nofile/nproc (this VM lacks CAP_SYS_RESOURCE: runc
  cannot raise the rlimits podman asks for otherwise), cgroupfs (no systemd here), file events and
  **file locks** under the private tmp dir (the default SHM lock segment /dev/shm/libpod_lock is
  shared by every podman store on the machine: two stores allocating the same lock numbers would
  block each other), netavark config dir private too.
* ``CONTAINERS_STORAGE_CONF``: graphroot/runroot under the test's directory; overlay when it works
  here, else vfs.
* ``CONTAINERS_REGISTRIES_CONF``: an empty file: no search registries, no short-name aliases, so a
  missing image fails at once ("short-name ... did not resolve").
* HTTP(S)_PROXY to a closed loopback port: even a fully qualified name fails on loopback.

``stop`` removes every container (``rm -af -t 0``: no 10 s stop timeout), kills by PID any conmon of
the store still alive (one podman lost track of: tests/services/leftovers.py), lazily unmounts what
is left under the directory and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.services.docker_daemon import CLOSED_PROXY, unmount_under
from tests.services.leftovers import kill_trees, processes

__all__ = ["PodmanStore", "PodmanUnavailable", "podman_store"]

ULIMITS = ["nofile=20000:20000", "nproc=32768:32768"]


class PodmanUnavailable(RuntimeError):
    """podman is missing or does not work with a private store here: the tests that need it skip."""


class PodmanStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = shutil.which("podman") or "podman"
        self.driver = "overlay"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point the podman CLI at this store (e.g. for ``runtime.env``)."""
        return {
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
            "HTTPS_PROXY": CLOSED_PROXY,
            "HTTP_PROXY": CLOSED_PROXY,
        }

    def write_config(self) -> None:
        r = self.root
        for sub in ("graph", "run", "tmp", "net"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        ulimits = ", ".join(f'"{u}"' for u in ULIMITS)
        (r / "containers.conf").write_text(
            "[containers]\n"
            f"default_ulimits = [{ulimits}]\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{r / "events.log"}"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{r / "tmp"}"\n'
            f'volume_path = "{r / "graph" / "volumes"}"\n'
            "[network]\n"
            f'network_config_dir = "{r / "net"}"\n'
        )
        (r / "storage.conf").write_text(
            f'[storage]\ndriver = "{self.driver}"\ngraphroot = "{r / "graph"}"\nrunroot = "{r / "run"}"\n'
        )
        (r / "registries.conf").write_text("")

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        result = subprocess.run(
            [self.binary, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def start(self) -> None:
        if shutil.which("podman") is None:
            raise PodmanUnavailable("podman is not installed (Debian: apt-get install podman)")
        if os.geteuid() != 0:
            raise PodmanUnavailable("the test store is set up for rootful podman (run the suite as root)")
        errors = []
        for driver in ("overlay", "vfs"):
            self.driver = driver
            self.write_config()
            info = self.cli("info", check=False)
            if info.returncode == 0:
                return
            errors.append(f"{driver}: {info.stderr.strip()[-300:]}")
            unmount_under(self.root / "graph")
            shutil.rmtree(self.root / "graph", ignore_errors=True)
            shutil.rmtree(self.root / "run", ignore_errors=True)
        raise PodmanUnavailable("podman info fails with a private store: " + "; ".join(errors))

    def container_names(self) -> list[str]:
        out = self.cli("ps", "-a", "--format", "{{.Names}}", check=False).stdout
        return [n for n in out.split() if n]

    def conmons(self) -> list[int]:
        """The live conmon processes of this store (their argv names paths under its directory)."""
        root = os.fsencode(self.root) + b"/"
        return processes("conmon", lambda argv: any(w.startswith(root) for w in argv))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("rm", "-af", "-t", "0", check=False, timeout=60)
        with contextlib.suppress(Exception):
            self.cli("system", "reset", "-f", check=False, timeout=60)
        # What the CLI has no record of (a podman killed while creating a container: a cancelled task)
        # or could not remove in time: conmon detaches from its podman, so it is killed by PID, with
        # the container's processes below it.
        kill_trees(self.conmons())
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def podman_store(root: Path) -> Iterator[PodmanStore]:
    store = PodmanStore(root)
    store.start()
    try:
        yield store
    finally:
        store.stop()
