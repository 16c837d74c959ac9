"""Fixtures every part of the suite shares. A test directory or module may override one by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tesp_api.config import Settings
from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore


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
