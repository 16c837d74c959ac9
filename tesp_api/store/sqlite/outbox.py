"""The callback outbox, named leases and retention on SQLite (docs/callbacks.md): functions of the
writer's connection, run inside its transaction by the store (store.py).

Why a module of its own: an outbox event is written in the same transaction as the state change it
reports (insert_event, called by create and update), and delivered by whoever leases it; none of
this touches the task rows except retention, which deletes a finished task only once its events are
delivered.
"""

from __future__ import annotations

import sqlite3

from tesp_api.store.port import CallbackEvent, TaskRecord
from tesp_api.store.records import callback_payload, from_epoch_ms, new_event_id
from tesp_api.tes.models import TesState


def insert_event(conn: sqlite3.Connection, record: TaskRecord, now_ms: int) -> None:
    """The outbox event of ``record``'s current state (the caller decided one is due)."""
    conn.execute(
        "INSERT INTO callback_outbox(event_id, task_id, state, url, payload, created_ms, next_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            new_event_id(),
            record.id,
            record.state.value,
            record.task.callback_url,
            callback_payload(record),
            now_ms,
            now_ms,
        ),
    )


def claim_events(
    conn: sqlite3.Connection, worker_id: str, now_ms: int, until_ms: int, limit: int
) -> list[CallbackEvent]:
    """Lease up to ``limit`` due events to ``worker_id``: only the oldest event of each task (no
    older one left), so a leased head keeps the task's later events back and they are delivered in
    state order by whoever holds it."""
    rows = conn.execute(
        "SELECT event_seq, event_id, task_id, state, url, payload, attempts, created_ms"
        " FROM callback_outbox o WHERE next_ms <= ?"
        " AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?)"
        " AND NOT EXISTS (SELECT 1 FROM callback_outbox p"
        " WHERE p.task_id = o.task_id AND p.event_seq < o.event_seq)"
        " ORDER BY next_ms, event_seq LIMIT ?",
        (now_ms, now_ms, max(1, limit)),
    ).fetchall()
    events: list[CallbackEvent] = []
    for seq, event_id, task_id, state, url, payload, attempts, created_ms in rows:
        conn.execute(
            "UPDATE callback_outbox SET lease_owner = ?, lease_expires_ms = ? WHERE event_seq = ?",
            (worker_id, until_ms, seq),
        )
        try:
            event_state = TesState(state)
        except ValueError:
            event_state = TesState.UNKNOWN
        events.append(
            CallbackEvent(
                id=event_id,
                task_id=task_id,
                seq=seq,
                state=event_state,
                url=url,
                payload=payload,
                attempts=attempts,
                created_at=from_epoch_ms(created_ms),
            )
        )
    return events


def finish_event(conn: sqlite3.Connection, worker_id: str, event: CallbackEvent) -> bool:
    """Delete a delivered event; False when ``worker_id`` no longer holds its lease."""
    cursor = conn.execute(
        "DELETE FROM callback_outbox WHERE event_seq = ? AND lease_owner = ?", (event.seq, worker_id)
    )
    return cursor.rowcount == 1


def retry_event(
    conn: sqlite3.Connection, worker_id: str, event: CallbackEvent, next_ms: int, error: str
) -> bool:
    """Give a failed delivery back for another attempt at ``next_ms``; False as finish_event."""
    cursor = conn.execute(
        "UPDATE callback_outbox SET attempts = attempts + 1, next_ms = ?, lease_owner = NULL,"
        " lease_expires_ms = NULL, last_error = ? WHERE event_seq = ? AND lease_owner = ?",
        (next_ms, error[:1000], event.seq, worker_id),
    )
    return cursor.rowcount == 1


def pending_events(conn: sqlite3.Connection) -> int:
    """Events not delivered yet (the /metrics gauge)."""
    return int(conn.execute("SELECT count(*) FROM callback_outbox").fetchone()[0])


def take_lease(conn: sqlite3.Connection, name: str, worker_id: str, now_ms: int, until_ms: int) -> bool:
    """Take or renew the named lease (one retention sweeper at a time) unless another holds it."""
    conn.execute(
        "INSERT INTO store_leases(name, owner, expires_ms) VALUES (?, ?, ?)"
        " ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms"
        " WHERE store_leases.owner = excluded.owner OR store_leases.expires_ms <= ?",
        (name, worker_id, until_ms, now_ms),
    )
    (owner,) = conn.execute("SELECT owner FROM store_leases WHERE name = ?", (name,)).fetchone()
    return bool(owner == worker_id)


def delete_finished(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> list[str]:
    """Delete up to ``limit`` inactive tasks final since before ``cutoff_ms`` whose events are all
    delivered; their ids."""
    rows = conn.execute(
        "SELECT seq, id FROM tasks WHERE finished_ms IS NOT NULL AND finished_ms <= ? AND active = 0"
        " AND NOT EXISTS (SELECT 1 FROM callback_outbox o WHERE o.task_id = tasks.id)"
        " ORDER BY finished_ms LIMIT ?",
        (cutoff_ms, max(1, limit)),
    ).fetchall()
    if not rows:
        return []
    marks = ",".join("?" * len(rows))
    # One statement (task_tags go with it: ON DELETE CASCADE), so a failure deletes nothing.
    conn.execute(f"DELETE FROM tasks WHERE seq IN ({marks})", [row[0] for row in rows])
    return [str(row[1]) for row in rows]
