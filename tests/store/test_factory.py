"""open_store picks the adapter from the settings and returns it opened."""

from __future__ import annotations

from pathlib import Path

from tesp_api.config.settings import DbSettings, Settings
from tesp_api.store.factory import open_store
from tesp_api.store.sqlite import SqliteTaskStore


async def test_without_mongodb_uri_the_sqlite_file_is_used_and_its_directory_created(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "still" / "tasks.sqlite3"
    store = await open_store(Settings(db=DbSettings(sqlite_path=str(path))))
    try:
        assert isinstance(store, SqliteTaskStore)
        assert await store.count() == 0
        assert path.exists()
    finally:
        await store.close()
