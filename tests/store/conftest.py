"""Fixtures for the one store contract suite: every test runs against each adapter.

``store`` yields an opened, empty store (SQLite in both of its list-query plans, MongoDB); ``reopen`` closes it and opens a fresh adapter on the
same database (persistence). The SQLite store runs on a file in tmp_path; the MongoDB store talks
the real wire protocol to the mongoeco server (or to a real mongod from TESP_TEST_MONGODB_URI),
each test in its own database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tesp_api.store.port import TaskStore
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.store.sqlite import reads as sqlite_reads

StoreMaker = Callable[[], TaskStore]


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    from tests.services.mongoeco import MongoUnavailable, mongodb_server

    try:
        with mongodb_server() as uri:
            yield uri
    except MongoUnavailable as exc:
        pytest.skip(f"no MongoDB to test against: {exc}")


@pytest.fixture(params=["sqlite", "sqlite-scan", "mongo"])
def store_maker(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreMaker:
    if request.param.startswith("sqlite"):
        if request.param == "sqlite-scan":
            # The SQLite store drives a list query from a selective filter's index and walks the
            # seq order for a broad one; test data is small, so force the walk here.
            monkeypatch.setattr(sqlite_reads, "SELECTIVE", 0)
        path = str(tmp_path / "tasks.sqlite3")
        return lambda: SqliteTaskStore(path)
    uri = request.getfixturevalue("mongodb_uri")
    from tesp_api.store.mongo import MongoTaskStore

    database = f"tesp_test_{uuid.uuid4().hex[:12]}"

    def drop_database() -> None:  # keeps a real mongod (TESP_TEST_MONGODB_URI) clean
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]]
        with MongoClient(uri) as client:
            client.drop_database(database)

    request.addfinalizer(drop_database)
    return lambda: MongoTaskStore(uri, database=database, collection="tasks")


@pytest.fixture
async def opened_stores() -> AsyncIterator[list[TaskStore]]:
    stores: list[TaskStore] = []
    yield stores
    for each in stores:
        await each.close()


@pytest.fixture
async def store(store_maker: StoreMaker, opened_stores: list[TaskStore]) -> TaskStore:
    first = store_maker()
    await first.open()
    opened_stores.append(first)
    return first


@pytest.fixture
def reopen(
    store: TaskStore, store_maker: StoreMaker, opened_stores: list[TaskStore]
) -> Callable[[], Awaitable[TaskStore]]:
    async def _reopen() -> TaskStore:
        await store.close()
        fresh = store_maker()
        await fresh.open()
        opened_stores.append(fresh)
        return fresh

    return _reopen


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    """An opened SQLite store on tmp_path/tasks.sqlite3, for the tests of SQLite-only behaviour."""
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await store.open()
    yield store
    await store.close()
