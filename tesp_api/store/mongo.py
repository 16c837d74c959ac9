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

Faults (issue 12, docs/store.md): ``claim`` takes a document that does not decode out of the queue
(SYSTEM_ERROR, a system log line) and goes on. The seq counter carries a random ``instance`` set
when it was first made; ``create`` increments it only with that instance, so a database or
collection dropped (or dropped and made afresh) under the running server is noticed at the next
create, at no extra cost, and the store then answers StoreUnavailable (the API: 503). An
``Idempotency-Key`` lives on the task document itself (``idem_key``, a unique sparse index), so the
key and the task are one insert and a crash cannot separate them.
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

from tesp_api.store.cursor import (
    PageBudget,
    decode_page_token,
    page_from,
    stored_bytes,
    summary_page_from,
    view_page_json,
)
from tesp_api.store.lean import (
    basic_body,
    join_log,
    join_task,
    quarantine_texts,
    split_log,
    split_task,
)
from tesp_api.store.mongo_fair import (
    HOLDING,
    NONE,
    WAITING,
    FairSlots,
    owner_doc_id,
    server_doc_id,
    slot_after,
)
from tesp_api.store.port import (
    CallbackEvent,
    ClaimPolicy,
    CorruptRecord,
    DuplicateTask,
    IdempotencyConflict,
    IdempotencyKey,
    ListQuery,
    LogPatch,
    Owner,
    Page,
    QuotaUsage,
    StoreError,
    StoreUnavailable,
    SummaryPage,
    TaskRecord,
    TaskSummary,
)
from tesp_api.store.records import (
    DECODE_ERRORS,
    apply_log_patch,
    callback_due,
    callback_payload,
    decode_problem,
    log_from_doc,
    new_event_id,
    new_log_doc,
    owner_key,
    owner_matches,
    truncate_ms,
    utc_now,
)
from tesp_api.tes import states
from tesp_api.tes.models import TesState, TesTask
from tesp_api.tes.views import json_bytes

logger = logging.getLogger(__name__)

_CAS_ATTEMPTS = 100
_CLAIM_SCAN = 16  # waiting tasks of one owner looked at per claim (a pinned task holds back only so many)
_SEQ_COUNTER = "seq"
_TOKEN_KEY = "page_token_key"  # noqa: S105 - the key's name in the meta collection


def tag_pair(key: str, value: str) -> str:
    return json.dumps([key, value], separators=(",", ":"), ensure_ascii=False)


def _record(doc: dict[str, Any]) -> TaskRecord | None:
    """The document as a record, None for a document of tesp-api 0.2, CorruptRecord (a StoreError)
    for one of this store that does not decode."""
    if "task_json" not in doc or "seq" not in doc:
        return None  # not a document of this store (e.g. tesp-api 0.2)
    try:
        return _decode(doc)
    except DECODE_ERRORS as exc:
        raise CorruptRecord(str(doc.get("_id")), decode_problem(exc)) from exc


# Reads for the views leave out what no view shows: the callback outbox (a BASIC payload per event).
_VIEW_PROJECTION: dict[str, Any] = {"outbox": 0}
_SUMMARY_PROJECTION: dict[str, Any] = {"_id": 1, "state": 1, "seq": 1, "owner_subject": 1, "owner_issuer": 1}
# The BASIC view: the light texts only, never content_json nor log_text_json (store/lean.py).
_BASIC_PROJECTION: dict[str, Any] = {**_SUMMARY_PROJECTION, "created_at": 1, "task_json": 1, "log_json": 1}


def _basic(doc: dict[str, Any]) -> bytes:
    """A _BASIC_PROJECTION document as its BASIC view's JSON; CorruptRecord when it does not decode."""
    try:
        state = TesState(doc["state"]).value
        body = basic_body(
            str(doc["_id"]),
            state,
            truncate_ms(doc["created_at"]),
            doc["task_json"],
            doc.get("log_json") or "{}",
        )
    except DECODE_ERRORS as exc:
        raise CorruptRecord(str(doc.get("_id")), decode_problem(exc)) from exc
    return json_bytes(body)


def _owner_of(doc: dict[str, Any]) -> Owner | None:
    subject = doc.get("owner_subject")
    return Owner(subject, doc.get("owner_issuer") or "") if subject is not None else None


def _summary(doc: dict[str, Any]) -> TaskSummary | None:
    if "seq" not in doc:
        return None  # not a document of this store (e.g. tesp-api 0.2)
    try:
        state = TesState(doc["state"])
    except (KeyError, ValueError) as exc:
        raise CorruptRecord(str(doc.get("_id")), f"unknown state {doc.get('state')!r}") from exc
    subject = doc.get("owner_subject")
    owner = Owner(subject, doc.get("owner_issuer") or "") if subject is not None else None
    return TaskSummary(str(doc["_id"]), state, int(doc["seq"]), owner)


_FINAL_STATES = tuple(s.value for s in TesState if states.is_final(s))
_SWEEP_LEASE = "lease:"


def _outbox_entry(record: TaskRecord, n: int, at: datetime) -> dict[str, Any]:
    return {
        "n": n,
        "id": new_event_id(),
        "state": record.state.value,
        "url": record.task.callback_url,
        "payload": callback_payload(record),
        "at": at,
    }


def _idem_key(owner: Owner | None, key: str) -> str:
    return json.dumps([owner_key(owner), key], separators=(",", ":"), ensure_ascii=False)


def _decode(doc: dict[str, Any]) -> TaskRecord:
    subject = doc.get("owner_subject")
    lease_expires = doc.get("lease_expires")
    return TaskRecord(
        id=doc["_id"],
        state=TesState(doc["state"]),
        task=join_task(doc["task_json"], doc.get("content_json")),
        owner=Owner(subject, doc.get("owner_issuer") or "") if subject is not None else None,
        created_at=truncate_ms(doc["created_at"]),
        seq=int(doc["seq"]),
        log=log_from_doc(join_log(doc.get("log_json") or "{}", doc.get("log_text_json"))),
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
        self._instance = ""  # the seq counter's instance (see the module docstring)
        self._failure: str | None = None  # set for good once the database is gone
        self._callback_states: frozenset[TesState] | None = None  # None: every state (outbox)
        self._repaired: dict[str, float] = {}  # fair slot documents repaired when (mongo_fair.py)

    @property
    def _tasks(self) -> Any:
        if self._client is None:
            raise StoreError("the task store is not open")
        return self._client[self._database_name][self._collection_name]

    @property
    def _fair(self) -> FairSlots:
        """The fair-claim slot documents (mongo_fair.py, docs/quotas.md)."""
        if self._client is None:
            raise StoreError("the task store is not open")
        return FairSlots(
            self._tasks, self._client[self._database_name][f"{self._collection_name}_fair"], self._repaired
        )

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
                    IndexModel(
                        [("idem_key", ASCENDING)], name="by_idempotency_key", unique=True, sparse=True
                    ),
                    IndexModel([("idem_expires", ASCENDING)], name="by_idempotency_expiry", sparse=True),
                    # The callback outbox (docs/callbacks.md) and retention's clock: only documents
                    # that have the field are indexed (tasks with callbacks; finished tasks).
                    IndexModel([("cb_next", ASCENDING)], name="callbacks_due", sparse=True),
                    IndexModel([("finished_at", ASCENDING)], name="by_finished", sparse=True),
                ]
            )
            self._token_key = await self._load_token_key()
            self._instance = await self._load_instance()
            await self._backfill_finished()
            await self._fair.create_indexes()
            await self._fair.backfill()
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

    async def get_or_create_secret(self, name: str) -> bytes:
        """In the meta collection under ``secret:<name>`` (hex), made by an upsert ($setOnInsert):
        concurrent first uses agree on one value."""
        self._check_available()
        for _ in range(3):  # two processes upserting at once: one gets DuplicateKeyError, then reads
            try:
                doc = await self._meta.find_one_and_update(
                    {"_id": f"secret:{name}"},
                    {"$setOnInsert": {"value": secrets.token_hex(32)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return bytes.fromhex(doc["value"])
            except DuplicateKeyError:
                continue
        raise StoreError(f"cannot read the secret {name!r}")

    async def _backfill_finished(self) -> None:
        """Once per database: finished tasks written before ``finished_at`` existed count as ended
        now, so retention deletes them finished_max_age after the upgrade, never at once."""
        if await self._meta.find_one({"_id": "finished_at_backfill"}) is not None:
            return
        await self._tasks.update_many(
            {"seq": {"$gte": 0}, "state": {"$in": list(_FINAL_STATES)}, "finished_at": {"$exists": False}},
            {"$set": {"finished_at": utc_now()}},
        )
        try:
            await self._meta.insert_one({"_id": "finished_at_backfill", "value": True})
        except DuplicateKeyError:
            pass

    async def _load_instance(self) -> str:
        """The seq counter's instance, made (with the counter) if missing; older counters get one."""
        await self._meta.update_one(
            {"_id": _SEQ_COUNTER},
            {"$setOnInsert": {"value": 0, "instance": secrets.token_hex(16)}},
            upsert=True,
        )
        await self._meta.update_one(
            {"_id": _SEQ_COUNTER, "instance": {"$exists": False}},
            {"$set": {"instance": secrets.token_hex(16)}},
        )
        doc = await self._meta.find_one({"_id": _SEQ_COUNTER})
        if doc is None or not doc.get("instance"):
            raise StoreError("cannot read the sequence counter")
        return str(doc["instance"])

    def _check_available(self) -> None:
        if self._failure is not None:
            raise StoreUnavailable(f"the task store is unavailable: {self._failure}")

    def _fail(self, reason: str) -> StoreUnavailable:
        if self._failure is None:
            self._failure = reason
            logger.error("task store unavailable: %s; restart the server once the database is back", reason)
        return StoreUnavailable(f"the task store is unavailable: {reason}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _next_seq(self) -> int:
        doc = await self._meta.find_one_and_update(
            {"_id": _SEQ_COUNTER, "instance": self._instance},
            {"$inc": {"value": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # never upserted: a missing counter means the database went away
            raise self._fail(
                f"the MongoDB database {self._database_name!r} (collection {self._collection_name!r})"
                " was dropped"
                " or replaced under the running server"
            )
        return int(doc["value"])

    async def _replay(self, idem: str, idempotency: IdempotencyKey) -> TaskRecord | None:
        """The first task of this key if it is still valid (None: no such key, or it expired and was
        released); IdempotencyConflict for another body."""
        now = utc_now()
        doc = await self._tasks.find_one({"idem_key": idem})
        if doc is None:
            return None
        expires = doc.get("idem_expires")
        if expires is not None and truncate_ms(expires) <= now:
            await self._tasks.update_one(
                {"_id": doc["_id"], "idem_key": idem, "idem_expires": {"$lte": now}},
                {"$unset": {"idem_key": "", "idem_fingerprint": "", "idem_expires": ""}},
            )
            return None
        if doc.get("idem_fingerprint") != idempotency.fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request body")
        return _record(doc)

    # -- TaskStore ---------------------------------------------------------------------------

    async def create(
        self, task: TesTask, owner: Owner | None, *, idempotency: IdempotencyKey | None = None
    ) -> TaskRecord:
        if not task.id:
            raise ValueError("task.id must be set by the caller")
        self._check_available()
        idem = _idem_key(owner, idempotency.key) if idempotency is not None else None
        if idem is not None and idempotency is not None:
            first = await self._replay(idem, idempotency)
            if first is not None:
                return first
        created_at = utc_now()
        task_json, content_json = split_task(task)
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
            # The heavy parts BASIC does not show in fields of their own (store/lean.py).
            "task_json": task_json,
            "content_json": content_json,
            "log_json": json.dumps(new_log_doc()),
            "log_text_json": None,
            "active": True,
            "lease_owner": None,
            "lease_expires": None,
            "backend_json": "{}",
            "version": 0,
            "slot": WAITING,  # fair claiming (mongo_fair.py)
        }
        if callback_due(task, TesState.QUEUED, self._callback_states):
            queued = TaskRecord(task.id, TesState.QUEUED, task, owner, created_at, seq)
            doc["outbox"] = [_outbox_entry(queued, 0, created_at)]
            doc["cb_next"] = created_at
        if idem is not None and idempotency is not None:
            doc |= {
                "idem_key": idem,
                "idem_fingerprint": idempotency.fingerprint,
                "idem_expires": truncate_ms(idempotency.expires_at),
            }
        try:
            await self._tasks.insert_one(doc)
        except DuplicateKeyError as exc:
            if idem is not None and idempotency is not None:  # the same key, inserted just before us?
                first = await self._replay(idem, idempotency)
                if first is not None:
                    return first
            raise DuplicateTask(f"task {task.id} exists already") from exc
        await self._fair.queued(owner.subject if owner else None, owner.issuer if owner else None, +1)
        return TaskRecord(
            id=task.id, state=TesState.QUEUED, task=task, owner=owner, created_at=created_at, seq=seq
        )

    async def get(self, task_id: str, owner: Owner | None = None) -> TaskRecord | None:
        doc = await self._tasks.find_one({"_id": task_id}, _VIEW_PROJECTION)
        record = _record(doc) if doc is not None else None
        if record is None or not owner_matches(record.owner, owner):
            return None
        return record

    async def get_summary(self, task_id: str, owner: Owner | None = None) -> TaskSummary | None:
        """The MINIMAL view from a projection: the task's JSON is not sent (LeanReads)."""
        doc = await self._tasks.find_one(
            {"_id": task_id, "task_json": {"$exists": True}}, _SUMMARY_PROJECTION
        )
        summary = _summary(doc) if doc is not None else None
        if summary is None or not owner_matches(summary.owner, owner):
            return None
        return summary

    async def list_summaries(self, query: ListQuery) -> SummaryPage:
        """list() for the MINIMAL view: the same query, projected to id, state, seq, owner."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)
        where = {**self._list_filter(query, below), "task_json": {"$exists": True}}
        cursor = self._tasks.find(where, _SUMMARY_PROJECTION).sort([("seq", DESCENDING)]).limit(page_size + 1)
        summaries: builtins.list[TaskSummary] = []
        async for doc in cursor:
            summary = _summary(doc)
            if summary is not None:
                summaries.append(summary)
        await cursor.close()
        return summary_page_from(summaries, page_size, key, query)

    @staticmethod
    def _list_filter(query: ListQuery, below: int | None) -> dict[str, Any]:
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
        return where

    async def get_basic_json(self, task_id: str, owner: Owner | None = None) -> bytes | None:
        """The BASIC view's JSON from a projection of the light texts (store/lean.py, issue 15)."""
        doc = await self._tasks.find_one(
            {"_id": task_id, "task_json": {"$exists": True}, "seq": {"$exists": True}}, _BASIC_PROJECTION
        )
        if doc is None or not owner_matches(_owner_of(doc), owner):
            return None
        return _basic(doc)

    async def list_basic_json(self, query: ListQuery) -> bytes:
        """The BASIC ListTasks answer: list()'s query, order and tokens, projected to the light texts."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)
        where = {**self._list_filter(query, below), "task_json": {"$exists": True}}
        cursor = self._tasks.find(where, _BASIC_PROJECTION).sort([("seq", DESCENDING)]).limit(page_size + 1)
        budget = PageBudget(query.max_bytes)
        views: builtins.list[bytes] = []
        seqs: builtins.list[int] = []
        async for doc in cursor:
            if not budget.admits(stored_bytes(doc.get("task_json"), doc.get("log_json"))):
                break
            views.append(_basic(doc))
            seqs.append(int(doc["seq"]))
        await cursor.close()
        return view_page_json(views, seqs, page_size, key, query, cut=budget.cut)

    async def list(self, query: ListQuery) -> Page:
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)
        where = self._list_filter(query, below)
        cursor = self._tasks.find(where, _VIEW_PROJECTION).sort([("seq", DESCENDING)]).limit(page_size + 1)
        budget = PageBudget(query.max_bytes)
        records: builtins.list[TaskRecord] = []
        async for doc in cursor:  # the driver reads in batches; max_bytes bounds what is held
            if "task_json" not in doc:
                continue
            texts = (
                doc.get("task_json"),
                doc.get("log_json"),
                doc.get("content_json"),
                doc.get("log_text_json"),
            )
            if not budget.admits(stored_bytes(*texts)):
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
                whole = join_log(doc.get("log_json") or "{}", doc.get("log_text_json"))
                log_doc = apply_log_patch(whole, log)
                changes["log_json"], changes["log_text_json"] = split_log(log_doc)
                record.log = log_from_doc(log_doc)
            previous = record.state
            if state is not None:
                record.state = state
                changes["state"] = state.value
            if backend:
                record.backend = {**record.backend, **backend}
                changes["backend_json"] = json.dumps(record.backend)
            if active is not None:
                record.active = active
                changes["active"] = active
            old_slot = int(doc.get("slot", NONE))
            new_slot = slot_after(old_slot, record.state, record.active)
            server = record.backend.get("server") if new_slot == HOLDING else None
            server = server if isinstance(server, str) else None
            if new_slot != old_slot or server != doc.get("slot_server"):
                changes["slot"], changes["slot_server"] = new_slot, server
            write: dict[str, Any] = {"$set": changes}
            if state is not None and state != previous:
                now = utc_now()
                if states.is_final(state) and not states.is_final(previous):
                    changes["finished_at"] = now  # retention's clock
                if callback_due(record.task, state, self._callback_states):
                    # The outbox event is in the same single-document write as the change: atomic,
                    # without a transaction (docs/callbacks.md). $min: due now unless due earlier.
                    write["$push"] = {"outbox": _outbox_entry(record, record.version + 1, now)}
                    write["$min"] = {"cb_next": now}
            result = await self._tasks.update_one({"_id": task_id, "version": record.version}, write)
            if result.matched_count == 1:
                record.version += 1
                if "slot" in changes:
                    await self._fair.after_change(doc, old_slot, new_slot, server)
                return record
            # Someone else wrote in between: read again and re-check the expectations.
        raise StoreError(f"task {task_id}: too much contention, update not applied")

    async def claim(
        self, worker_id: str, now: datetime, lease_until: datetime, *, policy: ClaimPolicy | None = None
    ) -> TaskRecord | None:
        """Tasks under way first, then a waiting task, fairly (mongo_fair.py: why the limits hold)."""
        self._check_available()
        record = await self._claim_under_way(worker_id, now, lease_until)
        if record is not None:
            return record
        return await self._claim_fair(worker_id, now, lease_until, policy or ClaimPolicy())

    async def _claim_under_way(
        self, worker_id: str, now: datetime, lease_until: datetime
    ) -> TaskRecord | None:
        while True:  # each pass either returns or takes one undecodable document out of the queue
            doc = None
            for lease in (None, {"$lte": truncate_ms(now)}):
                doc = await self._tasks.find_one_and_update(
                    {"active": True, "slot": {"$gte": HOLDING}, "lease_expires": lease},
                    {
                        "$set": {"lease_owner": worker_id, "lease_expires": truncate_ms(lease_until)},
                        "$inc": {"version": 1},
                    },
                    sort=[("lease_expires", ASCENDING), ("seq", ASCENDING)],
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    break
            if doc is None:
                return None
            try:
                record = _record(doc)
            except CorruptRecord as exc:
                await self._quarantine(doc, exc)
                continue
            if record is not None:
                return record
            await self._quarantine(doc, CorruptRecord(str(doc.get("_id")), "no task_json or seq"))

    async def _claim_fair(
        self, worker_id: str, now: datetime, lease_until: datetime, rules: ClaimPolicy
    ) -> TaskRecord | None:
        fair = self._fair
        loads = await fair.loads()
        after: tuple[int, str] = (-1, "")
        looked = False
        while True:
            owners = await fair.owners(after)
            if not owners:
                break
            for owner in owners:
                after = (int(owner.get("served") or 0), str(owner["_id"]))
                looked = True
                limit = rules.owner_limit(owner.get("subject"))
                if (
                    limit
                    and len(owner.get("holders") or []) >= limit
                    and not await fair.repair(owner["_id"], now=now)
                ):
                    continue
                record = await self._claim_of_owner(fair, owner, worker_id, now, lease_until, rules, loads)
                if record is not None:
                    return record
        # An owner whose waiting count was lost (a crash between a create's two writes): found here.
        stray = await self._tasks.find_one({"slot": WAITING}, sort=[("seq", ASCENDING)])
        if stray is not None:
            doc = await fair.fair.find_one(
                {"_id": owner_doc_id(stray.get("owner_subject"), stray.get("owner_issuer"))}
            )
            if doc is None or int(doc.get("queued") or 0) <= 0:
                await fair.queued(stray.get("owner_subject"), stray.get("owner_issuer"), +1)
                if not looked:
                    return await self._claim_fair(worker_id, now, lease_until, rules)
        return None

    async def _claim_of_owner(
        self,
        fair: FairSlots,
        owner: dict[str, Any],
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        rules: ClaimPolicy,
        loads: dict[str, int],
    ) -> TaskRecord | None:
        subject, issuer = owner.get("subject"), owner.get("issuer")
        free = {"$or": [{"lease_expires": None}, {"lease_expires": {"$lte": truncate_ms(now)}}]}
        cursor = (
            self._tasks.find({"slot": WAITING, "owner_subject": subject, "owner_issuer": issuer, **free})
            .sort([("seq", ASCENDING)])
            .limit(_CLAIM_SCAN)
        )
        candidates = [doc async for doc in cursor]
        if not candidates:
            await fair.no_waiting(owner)
            return None
        limit = rules.owner_limit(subject)
        for doc in candidates:
            try:
                record = _record(doc)
            except CorruptRecord as exc:
                await self._quarantine(doc, exc)
                continue
            if record is None:
                continue
            servers: list[str | None] = (
                list(rules.route(record, loads)) if rules.route is not None else [None]
            )
            if not servers:
                continue
            # (1) lease the waiting task: no other worker can take it now.
            leased = await self._tasks.find_one_and_update(
                {"_id": record.id, "slot": WAITING, "version": record.version, **free},
                {
                    "$set": {"lease_owner": worker_id, "lease_expires": truncate_ms(lease_until)},
                    "$inc": {"version": 1},
                },
                return_document=ReturnDocument.AFTER,
            )
            if leased is None:
                continue
            version = int(leased["version"])
            # (2) the owner's slot.
            if not await fair.take(owner["_id"], record.id, limit):
                await self._unlease(record.id, worker_id)
                return None
            # (3) a server's slot.
            chosen: str | None = None
            placed = False
            for name in servers:
                if name is None or await fair.take(
                    server_doc_id(name), record.id, rules.server_limits.get(name, 0)
                ):
                    chosen, placed = name, True
                    break
            if not placed:
                await fair.give_back(owner["_id"], record.id)
                await self._unlease(record.id, worker_id)
                continue
            # (4) the task holds its slot.
            backend = {**record.backend, "server": chosen} if chosen is not None else record.backend
            done = await self._tasks.update_one(
                {"_id": record.id, "slot": WAITING, "lease_owner": worker_id, "version": version},
                {
                    "$set": {"slot": HOLDING, "slot_server": chosen, "backend_json": json.dumps(backend)},
                    "$inc": {"version": 1},
                },
            )
            if not done.matched_count:  # cancelled meanwhile: give the slots back
                await fair.give_back(owner["_id"], record.id)
                if chosen is not None:
                    await fair.give_back(server_doc_id(chosen), record.id)
                continue
            await fair.queued(subject, issuer, -1)
            await fair.served(owner["_id"], await fair.next_served())
            record.backend = backend
            record.lease_owner = worker_id
            record.lease_expires = truncate_ms(lease_until)
            record.version = version + 1
            return record
        return None

    async def _unlease(self, task_id: str, worker_id: str) -> None:
        await self._tasks.update_one(
            {"_id": task_id, "slot": WAITING, "lease_owner": worker_id},
            {"$set": {"lease_owner": None, "lease_expires": None}, "$inc": {"version": 1}},
        )

    async def _quarantine(self, doc: dict[str, Any], exc: CorruptRecord) -> None:
        """Take a document that does not decode out of the queue: inactive, lease cleared,
        SYSTEM_ERROR (unless already final), a system log line saying why. Logged for the operator."""
        logger.error("task store: %s; taken out of the queue", exc)
        state, log_json, log_texts = quarantine_texts(
            str(doc.get("state")), doc.get("log_json"), doc.get("log_text_json"), exc.problem
        )
        await self._tasks.update_one(
            {"_id": doc["_id"]},
            {
                "$set": {
                    "state": state,
                    "log_json": log_json,
                    "log_text_json": log_texts,
                    "active": False,
                    "lease_owner": None,
                    "lease_expires": None,
                },
                "$inc": {"version": 1},
            },
        )

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

    async def quota_usage(self, owner: Owner | None) -> QuotaUsage:
        return await self._fair.usage(owner)

    async def count(self) -> int:
        return int(await self._tasks.count_documents({"seq": {"$gte": 0}}))

    async def count_by_state(self) -> dict[TesState, int]:
        """Tasks per state (the /metrics gauge): one count per state, each on the state index."""
        counts: dict[TesState, int] = {}
        for state in TesState:
            query = {"seq": {"$gte": 0}, "state": state.value}
            counts[state] = int(await self._tasks.count_documents(query))
        return counts

    # -- the callback outbox and retention (docs/callbacks.md) --------------------------------
    # A task's undelivered events are the array ``outbox`` of its own document (oldest first),
    # ``cb_next`` says when its head is due, ``cb_lease_owner``/``cb_lease_expires`` who delivers it
    # now, ``cb_attempts`` how often the head was tried. None of these bump ``version``: the
    # engine's compare-and-set never conflicts with a delivery.

    def record_callbacks_for(self, states: frozenset[TesState] | None) -> None:
        self._callback_states = states

    async def claim_callbacks(
        self, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[CallbackEvent]:
        self._check_available()
        moment = truncate_ms(now)
        events: builtins.list[CallbackEvent] = []
        for _ in range(max(1, limit)):
            doc = await self._tasks.find_one_and_update(
                {
                    "cb_next": {"$lte": moment},
                    "outbox.0": {"$exists": True},
                    "$or": [{"cb_lease_expires": None}, {"cb_lease_expires": {"$lte": moment}}],
                },
                {"$set": {"cb_lease_owner": worker_id, "cb_lease_expires": truncate_ms(lease_until)}},
                sort=[("cb_next", ASCENDING)],
                projection={"outbox": 1, "cb_attempts": 1},
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            head = doc["outbox"][0]
            try:
                state = TesState(head.get("state"))
            except ValueError:
                state = TesState.UNKNOWN
            events.append(
                CallbackEvent(
                    id=str(head["id"]),
                    task_id=str(doc["_id"]),
                    seq=int(head.get("n", 0)),
                    state=state,
                    url=str(head.get("url") or ""),
                    payload=str(head.get("payload") or "{}"),
                    attempts=int(doc.get("cb_attempts") or 0),
                    created_at=truncate_ms(head["at"]) if head.get("at") is not None else None,
                )
            )
        return events

    async def finish_callback(self, worker_id: str, event: CallbackEvent) -> bool:
        result = await self._tasks.update_one(
            {"_id": event.task_id, "outbox.0.id": event.id, "cb_lease_owner": worker_id},
            {
                "$pop": {"outbox": -1},
                "$set": {"cb_next": utc_now(), "cb_attempts": 0},
                "$unset": {"cb_lease_owner": "", "cb_lease_expires": "", "cb_error": ""},
            },
        )
        if result.matched_count != 1:
            return False
        # The last event gone: take the task out of the outbox index (an event pushed meanwhile
        # makes the array non-empty, and this does nothing).
        await self._tasks.update_one(
            {"_id": event.task_id, "outbox": {"$size": 0}}, {"$unset": {"cb_next": ""}}
        )
        return True

    async def retry_callback(
        self, worker_id: str, event: CallbackEvent, next_attempt: datetime, error: str
    ) -> bool:
        result = await self._tasks.update_one(
            {"_id": event.task_id, "outbox.0.id": event.id, "cb_lease_owner": worker_id},
            {
                "$set": {"cb_next": truncate_ms(next_attempt), "cb_error": error[:1000]},
                "$inc": {"cb_attempts": 1},
                "$unset": {"cb_lease_owner": "", "cb_lease_expires": ""},
            },
        )
        return bool(result.matched_count == 1)

    async def pending_callbacks(self) -> int:
        total = 0
        async for doc in self._tasks.find({"outbox.0": {"$exists": True}}, {"outbox": 1}):
            total += len(doc.get("outbox") or [])
        return total

    async def take_lease(self, name: str, worker_id: str, now: datetime, until: datetime) -> bool:
        self._check_available()
        try:
            await self._meta.find_one_and_update(
                {
                    "_id": _SWEEP_LEASE + name,
                    "$or": [{"owner": worker_id}, {"expires": {"$lte": truncate_ms(now)}}],
                },
                {"$set": {"owner": worker_id, "expires": truncate_ms(until)}},
                upsert=True,
            )
        except DuplicateKeyError:  # held by another replica, not expired: the upsert's insert clashed
            return False
        return True

    async def delete_finished(self, ended_before: datetime, limit: int) -> builtins.list[str]:
        self._check_available()
        where = {
            "finished_at": {"$lte": truncate_ms(ended_before)},
            "active": False,
            "outbox.0": {"$exists": False},
        }
        cursor = self._tasks.find(where, {"_id": 1}).sort([("finished_at", ASCENDING)]).limit(max(1, limit))
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return []
        await self._tasks.delete_many({**where, "_id": {"$in": ids}})
        # Read back what is gone (a task that got an event in between is kept).
        left = {doc["_id"] async for doc in self._tasks.find({"_id": {"$in": ids}}, {"_id": 1})}
        return [str(task_id) for task_id in ids if task_id not in left]
