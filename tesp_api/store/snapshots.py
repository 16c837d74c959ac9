"""Small state one process publishes for the others, kept in the task store (docs/quotas.md).

Why: with ``api.workers`` the API processes run no engine, and an API-only replica none either, yet
GET /admin/servers, the FULL view's "why it waits" line and the dashboard show the Pulsar servers'
health, which only an engine knows (it probes them). The store is what every process already
shares, so each engine writes its view there (``publish``, one row per engine, replaced every
probe interval) and every process reads them (``read``). Health is small and changes rarely: one
row write per engine per interval is nothing beside the task writes.

One table (SQLite: ``process_snapshots``, in the store's schema, sqlite/schema.py) or one
document per holder (MongoDB: ``snapshot:<kind>:<holder>`` in the store's meta collection). Kept
apart from the TaskStore protocol on purpose: it is optional (``snapshots_of`` gives None for a
store it does not know, and the API then shows the health as unknown), and the task store's
modules stay as they are. It uses the one private each store offers for this: SQLite's
``_call(fn, write=...)`` (its reader and writer lanes), MongoDB's ``_meta`` collection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from tesp_api.store.records import from_epoch_ms, to_epoch_ms

MAX_PAYLOAD_BYTES = 64 * 1024  # a snapshot is a summary; anything larger is a bug, refused loudly


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """What ``holder`` (a worker id) last published under ``kind``, and when."""

    kind: str
    holder: str
    payload: Mapping[str, Any]
    published_at: datetime


class Snapshots(Protocol):
    async def publish(self, kind: str, holder: str, payload: Mapping[str, Any], now: datetime) -> None:
        """Replace ``holder``'s snapshot of ``kind``."""

    async def read(self, kind: str) -> list[ProcessSnapshot]:
        """Every holder's latest snapshot of ``kind`` (none yet: empty)."""


def _encode(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"snapshot payload of {len(text)} bytes (at most {MAX_PAYLOAD_BYTES})")
    return text


class SqliteSnapshots:
    def __init__(self, store: Any) -> None:
        self._store = store

    async def publish(self, kind: str, holder: str, payload: Mapping[str, Any], now: datetime) -> None:
        text, at_ms = _encode(payload), to_epoch_ms(now)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO process_snapshots(kind, holder, payload, at_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(kind, holder) DO UPDATE SET payload = excluded.payload, at_ms = excluded.at_ms",
                (kind, holder, text, at_ms),
            )

        await self._store._call(write, write=True)

    async def read(self, kind: str) -> list[ProcessSnapshot]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            rows = conn.execute(
                "SELECT holder, payload, at_ms FROM process_snapshots WHERE kind = ?", (kind,)
            ).fetchall()
            return [(str(h), str(p), int(a)) for h, p, a in rows]

        rows: list[tuple[str, str, int]] = await self._store._call(read, write=False)
        return [_snapshot(kind, holder, text, from_epoch_ms(at_ms)) for holder, text, at_ms in rows]


class MongoSnapshots:
    def __init__(self, store: Any) -> None:
        self._store = store

    async def publish(self, kind: str, holder: str, payload: Mapping[str, Any], now: datetime) -> None:
        await self._store._meta.replace_one(
            {"_id": f"snapshot:{kind}:{holder}"},
            {"kind": kind, "holder": holder, "payload": _encode(payload), "at": now},
            upsert=True,
        )

    async def read(self, kind: str) -> list[ProcessSnapshot]:
        out: list[ProcessSnapshot] = []
        async for doc in self._store._meta.find({"kind": kind, "_id": {"$regex": f"^snapshot:{kind}:"}}):
            at = doc.get("at")
            if isinstance(at, datetime):
                when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
                out.append(_snapshot(kind, str(doc.get("holder")), str(doc.get("payload")), when))
        return out


def _snapshot(kind: str, holder: str, text: str, when: datetime) -> ProcessSnapshot:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    return ProcessSnapshot(kind, holder, payload if isinstance(payload, dict) else {}, when)


def snapshots_of(store: Any) -> Snapshots | None:
    """The snapshots of ``store`` (wrappers such as metrics' InstrumentedStore are looked through),
    or None for a store that keeps none (a test double)."""
    inner = store
    while getattr(inner, "wrapped", None) is not None:
        inner = inner.wrapped
    from tesp_api.store.sqlite import SqliteTaskStore

    if isinstance(inner, SqliteTaskStore):
        return SqliteSnapshots(inner)
    from tesp_api.store.mongo import MongoTaskStore

    if isinstance(inner, MongoTaskStore):
        return MongoSnapshots(inner)
    return None
