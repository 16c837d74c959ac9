"""Fair claiming on SQLite (docs/quotas.md): the slot columns, the counter tables and the triggers
that keep them exact, and the claim itself (a task under way whose lease is free, else a waiting
task round robin over its owners within the ClaimPolicy's limits).

Why a module of its own: the claim is the one place that reads the counters and takes a slot; it
runs inside the writer's BEGIN IMMEDIATE (store.py), so the counts it reads are the counts every
other process on the file sees. Everything else only writes task rows and lets the triggers count.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

from tesp_api.store.lean import quarantine_texts
from tesp_api.store.port import ClaimPolicy, CorruptRecord, TaskRecord
from tesp_api.store.records import from_epoch_ms
from tesp_api.store.sqlite.rows import COLUMNS, to_record
from tesp_api.tes import states
from tesp_api.tes.models import TesState

logger = logging.getLogger(__name__)

_CLAIM_SCAN = 16  # claim reads this many candidates at a time (undecodable ones are skipped)


# Fair claiming (docs/quotas.md). ``tasks.slot``: 0 none, 1 waiting (QUEUED, active, no slot yet),
# 2 holding a slot (claimed from QUEUED, or INITIALIZING/RUNNING); ``slot_server`` the server the
# slot counts against (backend.server). Triggers keep them and the counters (``owners``: waiting and
# holding tasks per owner, and when the owner was last served, the round robin; ``server_load``)
# exact in the same statement as the task row, whatever code path writes it (create, update,
# claim, quarantine, a retention delete): only the claim sets a slot itself.
# DEFAULT 1: a new row (always QUEUED and active) waits, without a write of its own.
_FAIR_COLUMNS = (("slot", "INTEGER NOT NULL DEFAULT 1"), ("slot_server", "TEXT"))
# The final states (tes/states.py) as an SQL list, for the triggers and the backfill.
_FINALS_SQL = "(" + ", ".join(f"'{s.value}'" for s in TesState if states.is_final(s)) + ")"
_OKEY_NEW = "json_array(NEW.owner_subject, NEW.owner_issuer)"
_OKEY_OLD = "json_array(OLD.owner_subject, OLD.owner_issuer)"
_ADD_NEW = f"""
    INSERT INTO owners(okey, subject, issuer, queued_n, active_n, served)
    SELECT {_OKEY_NEW}, NEW.owner_subject, NEW.owner_issuer, NEW.slot = 1, NEW.slot = 2, 0 WHERE NEW.slot != 0
    ON CONFLICT(okey) DO UPDATE SET queued_n = queued_n + excluded.queued_n, active_n = active_n + excluded.active_n;
    INSERT INTO server_load(name, active_n) SELECT NEW.slot_server, 1
    WHERE NEW.slot = 2 AND NEW.slot_server IS NOT NULL
    ON CONFLICT(name) DO UPDATE SET active_n = active_n + 1;"""
_SUB_OLD = f"""
    UPDATE owners SET queued_n = queued_n - (OLD.slot = 1), active_n = active_n - (OLD.slot = 2)
    WHERE OLD.slot != 0 AND okey = {_OKEY_OLD};
    UPDATE server_load SET active_n = active_n - 1 WHERE OLD.slot = 2 AND name = OLD.slot_server;"""
# A row's slot after any change: none once final or inactive; a QUEUED task keeps the slot it was
# claimed with (or waits); a task under way holds one (taken now if it had none: a task put back into
# INITIALIZING/RUNNING, e.g. by a rerun, is counted, never refused).
_SLOT_OF_NEW = f"""CASE WHEN NEW.active = 0 OR NEW.state IN {_FINALS_SQL} THEN 0
    WHEN NEW.state = 'QUEUED' THEN (CASE WHEN NEW.slot = 0 THEN 1 ELSE NEW.slot END) ELSE 2 END"""
_SERVER_OF_NEW = f"CASE WHEN ({_SLOT_OF_NEW}) = 2 THEN json_extract(NEW.backend_json, '$.server') END"
_FAIR_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS owners (
    okey TEXT PRIMARY KEY,
    subject TEXT,
    issuer TEXT,
    queued_n INTEGER NOT NULL,
    active_n INTEGER NOT NULL,
    served INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS owners_round_robin ON owners(served, okey) WHERE queued_n > 0",
    "CREATE TABLE IF NOT EXISTS server_load (name TEXT PRIMARY KEY, active_n INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks(owner_subject, owner_issuer, seq) WHERE slot = 1",
    (
        "CREATE INDEX IF NOT EXISTS tasks_under_way_free ON tasks(seq)"
        " WHERE active = 1 AND slot != 1 AND lease_expires_ms IS NULL"
    ),
    "CREATE INDEX IF NOT EXISTS tasks_under_way_leased ON tasks(lease_expires_ms) WHERE active = 1 AND slot != 1",
    f"""CREATE TRIGGER IF NOT EXISTS fair_insert AFTER INSERT ON tasks BEGIN {_ADD_NEW}
END""",
    f"""CREATE TRIGGER IF NOT EXISTS fair_follow AFTER UPDATE OF state, active, backend_json ON tasks BEGIN
    UPDATE tasks SET slot = {_SLOT_OF_NEW}, slot_server = {_SERVER_OF_NEW}
    WHERE seq = NEW.seq AND (slot != ({_SLOT_OF_NEW}) OR slot_server IS NOT ({_SERVER_OF_NEW}));
END""",
    f"""CREATE TRIGGER IF NOT EXISTS fair_count AFTER UPDATE OF slot, slot_server ON tasks
WHEN OLD.slot != NEW.slot OR OLD.slot_server IS NOT NEW.slot_server BEGIN {_SUB_OLD} {_ADD_NEW}
END""",
    f"""CREATE TRIGGER IF NOT EXISTS fair_delete AFTER DELETE ON tasks BEGIN {_SUB_OLD}
END""",
)
# A store written before fair claiming: every row gets its slot (a QUEUED task claimed but not moved
# yet holds one), then the counters are recounted (at every open: they are exact whatever happened).
_FAIR_BACKFILL = f"""UPDATE tasks SET
    slot = CASE WHEN active = 0 OR state IN {_FINALS_SQL} THEN 0
        WHEN state = 'QUEUED' AND lease_owner IS NULL THEN 1 ELSE 2 END,
    slot_server = CASE WHEN active = 1 AND state NOT IN {_FINALS_SQL}
        AND NOT (state = 'QUEUED' AND lease_owner IS NULL) THEN json_extract(backend_json, '$.server') END"""
_FAIR_RECOUNT = (
    "DELETE FROM server_load",
    (
        "INSERT INTO server_load(name, active_n) SELECT slot_server, count(*) FROM tasks"
        " WHERE slot = 2 AND slot_server IS NOT NULL GROUP BY slot_server"
    ),
    "UPDATE owners SET queued_n = 0, active_n = 0",
    (
        "INSERT INTO owners(okey, subject, issuer, queued_n, active_n, served)"
        " SELECT json_array(owner_subject, owner_issuer), owner_subject, owner_issuer,"
        " sum(slot = 1), sum(slot = 2), 0 FROM tasks WHERE slot != 0 GROUP BY owner_subject, owner_issuer"
        " ON CONFLICT(okey) DO UPDATE SET queued_n = excluded.queued_n, active_n = excluded.active_n"
    ),
)


def init_fair(conn: sqlite3.Connection) -> None:
    """The fair-claim columns, tables, indexes and triggers; then a recount of the counters."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    missing = [(name, decl) for name, decl in _FAIR_COLUMNS if name not in have]
    for name, decl in missing:
        conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {decl}")
    for name in ("fair_insert", "fair_follow", "fair_count", "fair_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")  # made afresh: always this version's text
    for statement in _FAIR_SCHEMA:
        conn.execute(statement)
    if missing:
        conn.execute(_FAIR_BACKFILL)
    for statement in _FAIR_RECOUNT:
        conn.execute(statement)


def _lease(
    conn: sqlite3.Connection,
    record: TaskRecord,
    worker_id: str,
    until_ms: int,
    *,
    take_slot: bool = False,
) -> TaskRecord:
    """Give ``worker_id`` the lease; ``take_slot``: a waiting task takes its owner's slot and that of
    the server the policy chose (recorded as backend.server; the triggers count it)."""
    record.lease_owner = worker_id
    record.lease_expires = from_epoch_ms(until_ms)
    record.version += 1
    if take_slot:
        server = record.backend.get("server")
        conn.execute(
            "UPDATE tasks SET lease_owner = ?, lease_expires_ms = ?, version = ?, slot = 2, slot_server = ?,"
            " backend_json = ? WHERE seq = ?",
            (
                worker_id,
                until_ms,
                record.version,
                server if isinstance(server, str) else None,
                json.dumps(record.backend),
                record.seq,
            ),
        )
    else:
        conn.execute(
            "UPDATE tasks SET lease_owner = ?, lease_expires_ms = ?, version = ? WHERE seq = ?",
            (worker_id, until_ms, record.version, record.seq),
        )
    return record


def _quarantine(conn: sqlite3.Connection, row: tuple[Any, ...], exc: CorruptRecord) -> None:
    """Take a row that does not decode out of the queue: inactive, lease cleared, SYSTEM_ERROR
    (unless already final), a system log line saying why. Logged for the operator."""
    logger.error("task store: %s; taken out of the queue", exc)
    state, light, texts = quarantine_texts(str(row[2]), row[7], row[14], exc.problem)
    conn.execute(
        "UPDATE tasks SET state = ?, log_json = ?, log_text_json = ?, active = 0, lease_owner = NULL,"
        " lease_expires_ms = NULL, version = version + 1 WHERE seq = ?",
        (state, light, texts, row[0]),
    )


def _decoded(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> Iterator[TaskRecord]:
    """The rows' records, in order; a row that does not decode is taken out of the queue
    (quarantine) and skipped: it must not block the valid tasks behind it."""
    for row in rows:
        try:
            yield to_record(row)
        except CorruptRecord as exc:
            _quarantine(conn, row, exc)


def take_under_way(conn: sqlite3.Connection, worker_id: str, now_ms: int, until_ms: int) -> TaskRecord | None:
    """A task past QUEUED (or claimed from it before) whose lease is free or expired: a crashed or
    stopped worker's task, a final task still to clean up. No limits: it holds its slot already.
    Decoded before the lease is taken; a row that does not decode is taken out of the queue
    (quarantine) instead of failing: it must not block the valid tasks behind it."""
    while True:
        rows = (
            conn.execute(
                f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_under_way_free WHERE active = 1 AND slot != 1"
                " AND lease_expires_ms IS NULL ORDER BY seq LIMIT ?",
                (_CLAIM_SCAN,),
            ).fetchall()
            or conn.execute(
                f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_under_way_leased WHERE active = 1"
                " AND slot != 1 AND lease_expires_ms <= ? ORDER BY lease_expires_ms LIMIT ?",
                (now_ms, _CLAIM_SCAN),
            ).fetchall()
        )
        if not rows:
            return None
        for record in _decoded(conn, rows):
            return _lease(conn, record, worker_id, until_ms)


def take_fair(
    conn: sqlite3.Connection, worker_id: str, until_ms: int, rules: ClaimPolicy
) -> TaskRecord | None:
    """A waiting task, round robin over the owners with waiting tasks, least recently served first;
    owners at their limit are skipped (their tasks stay QUEUED). Costs O(owners looked at), never
    O(queued tasks): every step is an index seek."""
    loads = {str(name): int(n) for name, n in conn.execute("SELECT name, active_n FROM server_load")}
    after: tuple[int, str] = (-1, "")
    while True:
        owners = conn.execute(
            "SELECT okey, subject, issuer, active_n, served FROM owners INDEXED BY owners_round_robin"
            " WHERE queued_n > 0 AND (served, okey) > (?, ?) ORDER BY served, okey LIMIT 64",
            after,
        ).fetchall()
        if not owners:
            return None
        for okey, subject, issuer, active_n, served in owners:
            after = (int(served), str(okey))
            limit = rules.owner_limit(subject)
            if limit and int(active_n) >= limit:
                continue
            record = _placeable(conn, subject, issuer, rules, loads)
            if record is None:
                continue
            (top,) = conn.execute("SELECT coalesce(max(served), 0) FROM owners").fetchone()
            conn.execute("UPDATE owners SET served = ? WHERE okey = ?", (int(top) + 1, okey))
            return _lease(conn, record, worker_id, until_ms, take_slot=True)


def _placeable(
    conn: sqlite3.Connection,
    subject: str | None,
    issuer: str | None,
    rules: ClaimPolicy,
    loads: dict[str, int],
) -> TaskRecord | None:
    """The owner's oldest waiting task some server can take now, with that server set as
    backend.server (none when the policy routes nothing). Looks at no more than _CLAIM_SCAN tasks:
    a task pinned to a full or down server holds back its owner's later tasks only that far."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_waiting WHERE slot = 1"
        " AND owner_subject IS ? AND owner_issuer IS ? ORDER BY seq LIMIT ?",
        (subject, issuer, _CLAIM_SCAN),
    ).fetchall()
    for record in _decoded(conn, rows):
        if rules.route is None:
            return record
        for name in rules.route(record, loads):
            limit = rules.server_limits.get(name, 0)
            if not limit or loads.get(name, 0) < limit:
                record.backend = {**record.backend, "server": name}
                return record
    return None
