"""The executor end-to-end suite, parametrized over the real runtimes of this machine.

Every test runs once per runtime: ``bwrap`` (bubblewrap, the host userland, no image), ``docker``
(a private dockerd: tests/services/docker_daemon.py) and ``podman`` (a private store:
tests/services/podman.py), the last two with ``local/busybox:1`` built from Debian's busybox-static
(tests/services/images.py). One real Pulsar (REST) for the session, a fresh store and engine per
test; ``runtime.type`` is always pinned (auto would pick podman or docker on this machine).

The runtime CLI inside the Pulsar job gets its endpoint (DOCKER_HOST; CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF and the closed proxy for podman) through the
``runtime.env`` setting, since Pulsar starts jobs with a clean environment.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.settings import Settings, TransferSettings
from tests.services.docker_daemon import DockerDaemon
from tests.services.http_server import HttpServer, http_server
from tests.services.images import BUSYBOX_IMAGE
from tests.services.podman import PodmanStore
from tests.services.pulsar import LocalPulsar, pulsar_server

RUNTIMES = ["bwrap", "docker", "podman"]


@dataclass
class RealRuntime:
    """One runtime as the tests see it: its settings, and a look at its containers."""

    kind: str
    settings: dict[str, Any]
    image: str = BUSYBOX_IMAGE
    container_names: Callable[[], list[str]] = field(default=list)
    has_images: bool = True  # bwrap ignores the image: the host userland runs
    has_cgroup_limits: bool = True  # bwrap has no cpu/memory limits


def _container_settings(kind: str, binary: str, env: dict[str, str]) -> dict[str, Any]:
    return {"type": kind, f"{kind}_bin": binary, "env": env}


@pytest.fixture(scope="session", params=RUNTIMES)
def real_runtime(request: pytest.FixtureRequest) -> RealRuntime:
    kind = request.param
    if kind == "bwrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bwrap (bubblewrap) is not installed")
        return RealRuntime("bwrap", {"type": "bwrap"}, has_images=False, has_cgroup_limits=False)
    if kind == "docker":
        daemon: DockerDaemon = request.getfixturevalue("docker_daemon")
        return RealRuntime(
            "docker",
            _container_settings("docker", daemon.client, daemon.env),
            container_names=daemon.container_names,
        )
    store: PodmanStore = request.getfixturevalue("podman_store")
    return RealRuntime(
        "podman",
        _container_settings("podman", store.binary, store.env),
        container_names=store.container_names,
    )


@pytest.fixture(scope="session")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar"), num_concurrent_jobs=4) as server:
        yield server


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """A local HTTP server the inputs are fetched from."""
    with http_server(tmp_path_factory.mktemp("web")) as server:
        yield server


def runtime_settings(pulsar_url: str, tmp: Path, runtime: dict[str, Any]) -> Settings:
    transfer: dict[str, Any] = {"allowed_dirs": [str(tmp)]}
    if "allowed_hosts" in TransferSettings.model_fields:  # loopback test servers are re-allowed explicitly
        transfer["allowed_hosts"] = ["127.0.0.1"]
    return Settings.model_validate(
        {
            "pulsar": {
                "url": pulsar_url,
                "status": {"poll_interval": 0.2},
                "retries": 1,
                "unreachable_deadline": 5,
            },
            "engine": {"work_dir": str(tmp / "work"), "claim_interval": 0.1, "lease_seconds": 10},
            "runtime": runtime,
            "transfer": transfer,
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


@pytest.fixture
def settings(pulsar: LocalPulsar, real_runtime: RealRuntime, tmp_path: Path) -> Settings:
    return runtime_settings(pulsar.url, tmp_path, real_runtime.settings)
