"""What the MongoDB store promises beyond the shared contract: it opens on a collection that
tesp-api 0.2 wrote, and ignores those documents instead of failing on them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo import AsyncMongoClient

from tesp_api.store.mongo import MongoTaskStore
from tesp_api.store.port import ListQuery
from tests.store.test_contract import make_task


async def test_documents_of_tesp_api_0_2_are_ignored_not_fatal(mongodb_uri: str) -> None:
    database = f"tesp_legacy_{uuid.uuid4().hex[:12]}"
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
    try:
        legacy = [
            {"_id": ObjectId(), "state": "COMPLETE", "executors": [{"image": "alpine", "command": ["true"]}]},
            {"_id": ObjectId(), "state": "QUEUED", "executors": [{"image": "alpine", "command": ["true"]}]},
        ]
        await client[database]["tasks"].insert_many(legacy)
        store = MongoTaskStore(mongodb_uri, database=database, collection="tasks")
        await store.open()
        try:
            record = await store.create(make_task("new"), None)
            page = await store.list(ListQuery(page_size=10))
            assert [r.id for r in page.records] == [record.id]
            assert await store.count() == 1
            assert await store.get(str(legacy[0]["_id"])) is None
            now = datetime.now(UTC)
            claimed = await store.claim("w1", now, now + timedelta(seconds=30))
            assert claimed is not None and claimed.id == record.id
            assert await store.claim("w2", now, now + timedelta(seconds=30)) is None
        finally:
            await store.close()
    finally:
        await client.drop_database(database)
        await client.close()
