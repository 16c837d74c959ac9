"""The MongoDB store under faults (issue 12): a document that does not decode does not block the
queue; a database dropped under the running store is noticed and refused (through the mongoeco
wire server, a real MongoDB protocol peer)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from tesp_api.store.mongo import MongoTaskStore
from tesp_api.store.port import StoreUnavailable
from tesp_api.tes.models import TesState
from tests.store.test_contract import make_task


@pytest.fixture
async def mongo(mongodb_uri: str) -> AsyncIterator[tuple[MongoTaskStore, Any]]:
    database = f"tesp_test_{uuid.uuid4().hex[:12]}"
    store = MongoTaskStore(mongodb_uri, database=database, collection="tasks")
    await store.open()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri)
    try:
        yield store, client[database]
    finally:
        await store.close()
        client.drop_database(database)
        client.close()


def _hours() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now, now + timedelta(hours=1)


async def test_a_document_that_does_not_decode_does_not_block_the_task_behind_it(
    mongo: tuple[MongoTaskStore, Any], caplog: pytest.LogCaptureFixture
) -> None:
    store, db = mongo
    bad = await store.create(make_task(), None)
    good = await store.create(make_task(), None)
    db.tasks.update_one({"_id": bad.id}, {"$set": {"task_json": '{"executors": [], "old": 1}'}})
    with caplog.at_level(logging.ERROR, logger="tesp_api.store.mongo"):
        claimed = await store.claim("w1", *_hours())
    assert claimed is not None and claimed.id == good.id
    assert bad.id in caplog.text
    doc = db.tasks.find_one({"_id": bad.id})
    assert (doc["state"], doc["active"]) == (TesState.SYSTEM_ERROR.value, False)
    assert "cannot read this stored task" in doc["log_text_json"]  # system logs kept apart (store/lean.py)
    assert await store.claim("w1", *_hours()) is None


@pytest.mark.parametrize("how", ["dropped", "dropped and made afresh"])
async def test_a_database_dropped_under_the_store_refuses_creates(
    mongo: tuple[MongoTaskStore, Any], mongodb_uri: str, how: str
) -> None:
    store, db = mongo
    await store.create(make_task(), None)
    db.client.drop_database(db.name)
    if how != "dropped":
        other = MongoTaskStore(mongodb_uri, database=db.name, collection="tasks")
        await other.open()
        await other.create(make_task(), None)
        await other.close()
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="dropped"):
            await store.create(make_task(), None)
    with pytest.raises(StoreUnavailable):
        await store.claim("w1", *_hours())
