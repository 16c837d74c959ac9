"""The MongoDB task store, on PyMongo's native async API (``pymongo.AsyncMongoClient``).

Database and collection come from the settings (``db.mongodb_database`` "tesp",
``db.mongodb_collection`` "tasks", the names tesp-api 0.2 used). One document per task:

* ``_id`` = task id (unique for free), ``seq`` = creation sequence from a counters document
  (``{_id: "seq"}`` in ``<collection>_meta``, ``$inc`` + upsert: atomic, strictly increasing, never
  reused, also across processes), and the filter fields ``state``, ``name``, ``owner_subject``,
  ``owner_issuer``, ``tag_keys`` (the tag keys) and ``tag_pairs`` (each tag as the JSON text
  ``["key","value"]``: an unambiguous string, so "key with this value" is one equality on an
  indexed array);
* ``task_json``, ``log_json`` and ``backend_json`` as JSON text, because task fields, tag keys,
  env names and metadata keys may contain ``.`` or ``$``, which MongoDB field paths cannot carry;
* ``active``, ``lease_owner``, ``lease_expires`` (BSON date), ``version``.

Compare-and-set: ``update`` reads the document, checks the expectations and applies the patch in
Python (the same code as the SQLite store, store/records.py), then writes with
``update_one({_id, version: v})``; if another writer got there first it re-reads and re-checks, so
exactly one of many racing writers wins and a lost race writes nothing. ``claim`` is one
``find_one_and_update`` on ``{active: true, lease free or expired}`` sorted by ``seq`` ascending.

Documents without ``seq``/``task_json`` (written by tesp-api 0.2) are ignored: lists only take
``seq >= 0`` and ``get`` returns None for them. They are not migrated.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import secrets
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from tesp_api.store.cursor import PageBudget, decode_page_token, page_from, stored_bytes
from tesp_api.store.port import DuplicateTask, ListQuery, LogPatch, Owner, Page, StoreError, TaskRecord
from tesp_api.store.records import (
    apply_log_patch,
    log_from_doc,
    new_log_doc,
    owner_matches,
    truncate_ms,
    utc_now,
)
from tesp_api.tes.models import TesState, TesTask

logger = logging.getLogger(__name__)

_CAS_ATTEMPTS = 100
_SEQ_COUNTER = "seq"
_TOKEN_KEY = "page_token_key"


def tag_pair(key: str, value: str) -> str:
    return json.dumps([key, value], separators=(",", ":"), ensure_ascii=False)


def _record(doc: dict[str, Any]) -> TaskRecord | None:
    if "task_json" not in doc or "seq" not in doc:
        return None  # not a document of this store (e.g. tesp-api 0.2)
    subject = doc.get("owner_subject")
    lease_expires = doc.get("lease_expires")
    return TaskRecord(
        id=doc["_id"],
        state=TesState(doc["state"]),
        task=TesTask.model_validate_json(doc["task_json"]),
        owner=Owner(subject, doc.get("owner_issuer") or "") if subject is not None else None,
        created_at=truncate_ms(doc["created_at"]),
        seq=int(doc["seq"]),
        log=log_from_doc(json.loads(doc.get("log_json") or "{}")),
        active=bool(doc.get("active")),
        lease_owner=doc.get("lease_owner"),
        lease_expires=truncate_ms(lease_expires) if lease_expires is not None else None,
        backend=json.loads(doc.get("backend_json") or "{}"),
        version=int(doc.get("version", 0)),
    )


class MongoTaskStore:
    """TaskStore on one MongoDB collection; see the module docstring for the layout."""

    def __init__(self, uri: str, *, database: str = "tesp", collection: str = "tasks") -> None:
        self._uri = uri
        self._database_name = database
        self._collection_name = collection
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._token_key = b""

    @property
    def _tasks(self) -> Any:
        if self._client is None:
            raise StoreError("the task store is not open")
        return self._client[self._database_name][self._collection_name]

    @property
    def _meta(self) -> Any:
        if self._client is None:
            raise StoreError("the task store is not open")
        return self._client[self._database_name][f"{self._collection_name}_meta"]

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = AsyncMongoClient(self._uri, tz_aware=True)
        try:
            await self._tasks.create_indexes(
                [
                    # sparse: documents of tesp-api 0.2 in the same collection have no seq, and a
                    # plain unique index would count them as duplicate nulls and fail to build.
                    IndexModel([("seq", DESCENDING)], name="by_seq", unique=True, sparse=True),
                    IndexModel([("state", ASCENDING), ("seq", DESCENDING)], name="by_state"),
                    IndexModel(
                        [("owner_subject", ASCENDING), ("owner_issuer", ASCENDING), ("seq", DESCENDING)],
                        name="by_owner",
                    ),
                    IndexModel([("name", ASCENDING), ("seq", DESCENDING)], name="by_name"),
                    IndexModel([("tag_pairs", ASCENDING), ("seq", DESCENDING)], name="by_tag_pair"),
                    IndexModel([("tag_keys", ASCENDING), ("seq", DESCENDING)], name="by_tag_key"),
                    IndexModel(
                        [("seq", ASCENDING)], name="claimable", partialFilterExpression={"active": True}
                    ),
                ]
            )
            self._token_key = await self._load_token_key()
        except BaseException:
            await self.close()
            raise

    async def _load_token_key(self) -> bytes:
        for _ in range(3):  # two processes opening at once may race on the upsert
            try:
                doc = await self._meta.find_one_and_update(
                    {"_id": _TOKEN_KEY},
                    {"$setOnInsert": {"value": secrets.token_hex(32)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return bytes.fromhex(doc["value"])
            except DuplicateKeyError:
                continue
        raise StoreError("cannot read the page token key")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _next_seq(self) -> int:
        doc = await self._meta.find_one_and_update(
            {"_id": _SEQ_COUNTER}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    # -- TaskStore ---------------------------------------------------------------------------

    async def create(self, task: TesTask, owner: Owner | None) -> TaskRecord:
        if not task.id:
            raise ValueError("task.id must be set by the caller")
        created_at = utc_now()
        tags = task.tags or {}
        seq = await self._next_seq()
        doc = {
            "_id": task.id,
            "seq": seq,
            "state": TesState.QUEUED.value,
            "name": task.name,
            "owner_subject": owner.subject if owner else None,
            "owner_issuer": owner.issuer if owner else None,
            "created_at": created_at,
            "tag_keys": list(tags),
            "tag_pairs": [tag_pair(k, v) for k, v in tags.items()],
            "task_json": task.model_dump_json(exclude_none=True),
            "log_json": json.dumps(new_log_doc()),
            "active": True,
            "lease_owner": None,
            "lease_expires": None,
            "backend_json": "{}",
            "version": 0,
        }
        try:
            await self._tasks.insert_one(doc)
        except DuplicateKeyError as exc:
            raise DuplicateTask(f"task {task.id} exists already") from exc
        return TaskRecord(id=task.id, state=TesState.QUEUED, task=task, owner=owner, created_at=created_at, seq=seq)

    async def get(self, task_id: str, owner: Owner | None = None) -> TaskRecord | None:
        doc = await self._tasks.find_one({"_id": task_id})
        record = _record(doc) if doc is not None else None
        if record is None or not owner_matches(record.owner, owner):
            return None
        return record

    async def list(self, query: ListQuery) -> Page:
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)
        seq_range: dict[str, int] = {"$gte": 0}
        if below is not None:
            seq_range["$lt"] = below
        where: dict[str, Any] = {"seq": seq_range}
        if query.state is not None:
            where["state"] = query.state.value
        if query.owner is not None:
            where["owner_subject"] = query.owner.subject
            where["owner_issuer"] = query.owner.issuer
        if query.name_prefix:
            # Anchored and escaped: a plain prefix, which MongoDB answers from the name index.
            where["name"] = {"$regex": "^" + re.escape(query.name_prefix)}
        pairs = [tag_pair(k, v) for k, v in query.tags if v]
        keys = [k for k, v in query.tags if not v]
        if pairs:
            where["tag_pairs"] = {"$all": pairs}
        if keys:
            where["tag_keys"] = {"$all": keys}
        cursor = self._tasks.find(where).sort([("seq", DESCENDING)]).limit(page_size + 1)
        budget = PageBudget(query.max_bytes)
        records: builtins.list[TaskRecord] = []
        async for doc in cursor:  # the driver reads in batches; max_bytes bounds what is held
            if "task_json" not in doc:
                continue
            if not budget.admits(stored_bytes(doc.get("task_json"), doc.get("log_json"))):
                break
            record = _record(doc)
            if record is not None:
                records.append(record)
        await cursor.close()
        return page_from(records, page_size, key, query, cut=budget.cut)

    async def update(
        self,
        task_id: str,
        *,
        expected: frozenset[TesState] | None = None,
        state: TesState | None = None,
        log: LogPatch | None = None,
        backend: dict[str, Any] | None = None,
        active: bool | None = None,
        lease_owner: str | None = None,
    ) -> TaskRecord | None:
        for _ in range(_CAS_ATTEMPTS):
            doc = await self._tasks.find_one({"_id": task_id})
            record = _record(doc) if doc is not None else None
            if doc is None or record is None:
                return None
            if expected is not None and record.state not in expected:
                return None
            if lease_owner is not None and record.lease_owner != lease_owner:
                return None
            changes: dict[str, Any] = {"version": record.version + 1}
            if log is not None:
                log_doc = apply_log_patch(json.loads(doc.get("log_json") or "{}"), log)
                changes["log_json"] = json.dumps(log_doc)
                record.log = log_from_doc(log_doc)
            if state is not None:
                record.state = state
                changes["state"] = state.value
            if backend:
                record.backend = {**record.backend, **backend}
                changes["backend_json"] = json.dumps(record.backend)
            if active is not None:
                record.active = active
                changes["active"] = active
            result = await self._tasks.update_one({"_id": task_id, "version": record.version}, {"$set": changes})
            if result.matched_count == 1:
                record.version += 1
                return record
            # Someone else wrote in between: read again and re-check the expectations.
        raise StoreError(f"task {task_id}: too much contention, update not applied")

    async def claim(self, worker_id: str, now: datetime, lease_until: datetime) -> TaskRecord | None:
        doc = await self._tasks.find_one_and_update(
            {
                "active": True,
                "$or": [{"lease_expires": None}, {"lease_expires": {"$lte": truncate_ms(now)}}],
            },
            {
                "$set": {"lease_owner": worker_id, "lease_expires": truncate_ms(lease_until)},
                "$inc": {"version": 1},
            },
            sort=[("seq", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return _record(doc) if doc is not None else None

    async def renew(
        self, worker_id: str, task_ids: builtins.list[str], lease_until: datetime
    ) -> builtins.list[str]:
        if not task_ids:
            return []
        ids = list(dict.fromkeys(task_ids))
        await self._tasks.update_many(
            {"_id": {"$in": ids}, "lease_owner": worker_id},
            {"$set": {"lease_expires": truncate_ms(lease_until)}, "$inc": {"version": 1}},
        )
        # Read back which ones this worker holds now (a lease taken over in between is not ours).
        cursor = self._tasks.find({"_id": {"$in": ids}, "lease_owner": worker_id}, {"_id": 1})
        held = {doc["_id"] async for doc in cursor}
        return [task_id for task_id in ids if task_id in held]

    async def release(self, worker_id: str, task_id: str) -> None:
        await self._tasks.update_one(
            {"_id": task_id, "lease_owner": worker_id},
            {"$set": {"lease_owner": None, "lease_expires": None}, "$inc": {"version": 1}},
        )

    async def count(self) -> int:
        return int(await self._tasks.count_documents({"seq": {"$gte": 0}}))
