"""Fixtures every part of the suite shares. A test directory or module may override one by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tesp_api.config import Settings
from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tests.services.docker_daemon import DaemonUnavailable, DockerDaemon
from tests.services.images import ImageUnavailable, import_image
from tests.services.podman import PodmanStore, PodmanUnavailable


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    """The embedded task store in the test's own directory, opened and closed around the test."""
    opened = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def engine(settings: Settings, store: SqliteTaskStore) -> AsyncIterator[Engine]:
    """A started engine on ``store``, built from the module's or directory's ``settings`` fixture."""
    started = Engine(settings, store)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


# Real container runtimes (tests/runtimes/): one private dockerd and one private podman store per
# session, each with local/busybox:1 imported. Started only when a test asks for them; a machine
# where they cannot run skips those tests with the reason.


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    """A private dockerd (own data/exec root and socket, no bridge, no iptables, closed proxy)."""
    daemon = DockerDaemon(tmp_path_factory.mktemp("dockerd"))
    try:
        daemon.start()
    except DaemonUnavailable as exc:
        pytest.skip(f"no Docker here: {exc}")
    try:
        try:
            import_image([daemon.client], daemon.env)
        except (ImageUnavailable, RuntimeError) as exc:
            pytest.skip(f"no local/busybox:1 image for docker: {exc}")
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def podman_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanStore]:
    """Podman with a private store and configuration, all set through environment variables."""
    store = PodmanStore(tmp_path_factory.mktemp("podman"))
    try:
        store.start()
    except PodmanUnavailable as exc:
        pytest.skip(f"no Podman here: {exc}")
    try:
        try:
            import_image([store.binary], store.env)
        except (ImageUnavailable, RuntimeError) as exc:
            pytest.skip(f"no local/busybox:1 image for podman: {exc}")
        yield store
    finally:
        store.stop()
