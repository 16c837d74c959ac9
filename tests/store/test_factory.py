"""open_store picks the adapter from the settings and returns it opened."""

from __future__ import annotations

import uuid
from pathlib import Path

from pymongo import AsyncMongoClient

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


async def test_with_mongodb_uri_the_mongodb_store_is_used(mongodb_uri: str) -> None:
    from pydantic import SecretStr

    from tesp_api.store.mongo import MongoTaskStore

    database = f"tesp_factory_{uuid.uuid4().hex[:12]}"
    settings = Settings(db=DbSettings(mongodb_uri=SecretStr(mongodb_uri), mongodb_database=database))
    store = await open_store(settings)
    try:
        assert isinstance(store, MongoTaskStore)
        assert await store.count() == 0
    finally:
        await store.close()
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
        await client.drop_database(database)
        await client.close()
