"""The embedded task store: one SQLite file, no server (the default of ``tesp-api serve``).

Why SQLite: it is in the standard library, keeps tasks across restarts in one file, and with WAL
several processes (an API server and separate workers) can share that file safely.

How it stays off the event loop: two dedicated threads, each owning one connection, execute
operations taken from their queue; coroutines wait on a future. The *reader* (get, list, count;
``query_only``) never waits behind a write transaction, WAL lets it read while another connection
or process writes. The *writer* (create, update, claim, renew, release) does **group commit**: it drains
every operation queued while the previous batch ran and executes the batch inside ONE
``BEGIN IMMEDIATE`` transaction and commits once; a failing write (a duplicate id) writes nothing
and does not undo the others (see ``_execute``). Under load, dozens of creates share one
commit, which is what makes the create endpoint fast; with one client, a batch is one operation
and nothing waits. ``BEGIN IMMEDIATE`` takes the write lock up front, so a compare-and-set or a
claim reads and writes under the lock even when other processes use the same file (they wait up
to ``busy_timeout``). ``synchronous=FULL`` by default: a create that answered 200 survives a power
loss too (one fsync per group commit, so the cost is shared by the batch); ``NORMAL`` (setting
``db.sqlite_synchronous``) trades the last transactions before a power loss for fewer fsyncs.

Layout: ``tasks`` (one row per task, the submitted task and the log as JSON text, the filter
columns beside them) and ``task_tags`` (one row per tag, for exact tag filtering through an
index). See docs/store.md.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from tesp_api.store.cursor import (
    PageBudget,
    decode_page_token,
    encode_page_token,
    page_from,
    stored_bytes,
    summary_page_from,
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
    from_epoch_ms,
    log_from_doc,
    new_event_id,
    new_log_doc,
    owner_key,
    owner_matches,
    quarantine_change,
    to_epoch_ms,
    utc_now,
)
from tesp_api.tes import states
from tesp_api.tes.models import TesState, TesTask

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    name TEXT,
    owner_subject TEXT,
    owner_issuer TEXT,
    created_at_ms INTEGER NOT NULL,
    task_json TEXT NOT NULL,
    log_json TEXT NOT NULL,
    active INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_ms INTEGER,
    backend_json TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS task_tags (
    seq INTEGER NOT NULL REFERENCES tasks(seq) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (seq, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_tags_by_pair ON task_tags(key, value, seq);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, seq);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks(owner_subject, owner_issuer, seq);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks(name, seq);
CREATE INDEX IF NOT EXISTS tasks_claimable ON tasks(seq) WHERE active = 1;
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys(expires_ms);
CREATE TABLE IF NOT EXISTS callback_outbox (
    event_seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_ms INTEGER,
    last_error TEXT
);
DROP INDEX IF EXISTS callback_outbox_due;
CREATE INDEX IF NOT EXISTS callback_outbox_due_order ON callback_outbox(next_ms, event_seq);
CREATE INDEX IF NOT EXISTS callback_outbox_by_task ON callback_outbox(task_id, event_seq);
CREATE TABLE IF NOT EXISTS store_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL);
"""

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


def _init_fair(conn: sqlite3.Connection) -> None:
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


_COLUMNS = (
    "seq, id, state, owner_subject, owner_issuer, created_at_ms, task_json, log_json, active,"
    " lease_owner, lease_expires_ms, backend_json, version"
)

_MAX_BATCH = 512
_STOP = object()
_IDENTITY_CHECK_SECONDS = 1.0  # reads look at the file's identity at most this often (writes: every batch)
_PURGE_SECONDS = 60.0  # expired idempotency keys are deleted at most this often
# A point read by a unique index runs a few dozen SQLite VM instructions; past this many, the read on
# the event loop is interrupted and goes to the reader thread (_point_read).
_DIRECT_STEPS = 2000
_CLAIM_SCAN = 16  # claim reads this many candidates at a time (undecodable ones are skipped)


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Outcome:
    op: _Op
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Lane:
    """One connection served by one thread from one queue.

    ``pending`` holds the operations each event loop queued during its current iteration; they are
    handed to the thread together at the end of it: one thread wake-up per loop iteration instead
    of one per operation (waking a thread costs more than most operations).
    """

    queue: queue.SimpleQueue[Any]
    thread: threading.Thread | None = None
    pending: dict[asyncio.AbstractEventLoop, list[_Op]] = field(default_factory=dict)
    closed: bool = False
    # Set once for good when the lane cannot serve any more (a dead writer, a vanished file): every
    # call then fails at once with StoreUnavailable instead of waiting for an answer that never comes.
    failure: str | None = None


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    """The store's thread did not answer in time: the caller gets a StoreError (the operation may
    still happen; its late outcome is dropped by _settle)."""
    if not future.done():
        future.set_exception(StoreError(f"the task store did not answer within {timeout:g} s"))


def _interrupt() -> int:
    """SQLite progress handler: non-zero interrupts the statement (sqlite3.OperationalError)."""
    return 1


def _settle(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        future = outcome.op.future
        if future.done():  # the caller gave up (cancelled); the operation still happened
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)


_SUMMARY_COLUMNS = "seq, id, state, owner_subject, owner_issuer"
_STATE_LIST = ", ".join(f"'{state.value}'" for state in TesState)  # SQL literals of every TES state


def _summary(row: tuple[Any, ...]) -> TaskSummary:
    seq, task_id, state, subject, issuer = row
    try:
        task_state = TesState(state)
    except ValueError as exc:
        raise CorruptRecord(str(task_id), f"unknown state {state!r}") from exc
    return TaskSummary(
        task_id, task_state, seq, Owner(subject, issuer or "") if subject is not None else None
    )


def _record(row: tuple[Any, ...]) -> TaskRecord:
    """The row as a record; CorruptRecord (a StoreError) when it does not decode."""
    try:
        return _decode(row)
    except DECODE_ERRORS as exc:
        raise CorruptRecord(str(row[1]), decode_problem(exc)) from exc


def _decode(row: tuple[Any, ...]) -> TaskRecord:
    (
        seq,
        task_id,
        state,
        subject,
        issuer,
        created_ms,
        task_json,
        log_json,
        active,
        lease_owner,
        lease_ms,
        backend_json,
        version,
    ) = row
    return TaskRecord(
        id=task_id,
        state=TesState(state),
        task=TesTask.model_validate_json(task_json),
        owner=Owner(subject, issuer or "") if subject is not None else None,
        created_at=from_epoch_ms(created_ms),
        seq=seq,
        log=log_from_doc(json.loads(log_json)),
        active=bool(active),
        lease_owner=lease_owner,
        lease_expires=from_epoch_ms(lease_ms) if lease_ms is not None else None,
        backend=json.loads(backend_json),
        version=version,
    )


def _quarantine(conn: sqlite3.Connection, row: tuple[Any, ...], exc: CorruptRecord) -> None:
    """Take a row that does not decode out of the queue: inactive, lease cleared, SYSTEM_ERROR
    (unless already final), a system log line saying why. Logged for the operator."""
    logger.error("task store: %s; taken out of the queue", exc)
    state, log_json = quarantine_change(str(row[2]), row[7], exc.problem)
    conn.execute(
        "UPDATE tasks SET state = ?, log_json = ?, active = 0, lease_owner = NULL, lease_expires_ms = NULL,"
        " version = version + 1 WHERE seq = ?",
        (state, log_json, row[0]),
    )


def _add_finished_column(conn: sqlite3.Connection) -> None:
    """``tasks.finished_ms`` (when the task reached its final state: retention's clock) and its index.
    A file written before it existed gets the column; its finished tasks count as ended now, so
    retention deletes them finished_max_age after the upgrade, never at once."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "finished_ms" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN finished_ms INTEGER")
        marks = ",".join("?" * len(_FINAL_STATES))
        conn.execute(
            f"UPDATE tasks SET finished_ms = ? WHERE state IN ({marks})",
            (to_epoch_ms(utc_now()), *_FINAL_STATES),
        )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(finished_ms) WHERE finished_ms IS NOT NULL"
    )


_FINAL_STATES = tuple(s.value for s in TesState if states.is_final(s))


def _outbox_insert(conn: sqlite3.Connection, record: TaskRecord, now_ms: int) -> None:
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


def _take_under_way(
    conn: sqlite3.Connection, worker_id: str, now_ms: int, until_ms: int
) -> TaskRecord | None:
    """A task past QUEUED (or claimed from it before) whose lease is free or expired: a crashed or
    stopped worker's task, a final task still to clean up. No limits: it holds its slot already.
    Decoded before the lease is taken; a row that does not decode is taken out of the queue
    (quarantine) instead of failing: it must not block the valid tasks behind it."""
    while True:
        rows = (
            conn.execute(
                f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_under_way_free WHERE active = 1 AND slot != 1"
                " AND lease_expires_ms IS NULL ORDER BY seq LIMIT ?",
                (_CLAIM_SCAN,),
            ).fetchall()
            or conn.execute(
                f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_under_way_leased WHERE active = 1"
                " AND slot != 1 AND lease_expires_ms <= ? ORDER BY lease_expires_ms LIMIT ?",
                (now_ms, _CLAIM_SCAN),
            ).fetchall()
        )
        if not rows:
            return None
        for row in rows:
            try:
                record = _record(row)
            except CorruptRecord as exc:
                _quarantine(conn, row, exc)
                continue
            return _lease(conn, record, worker_id, until_ms)


def _take_fair(
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
        f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_waiting WHERE slot = 1"
        " AND owner_subject IS ? AND owner_issuer IS ? ORDER BY seq LIMIT ?",
        (subject, issuer, _CLAIM_SCAN),
    ).fetchall()
    for row in rows:
        try:
            record = _record(row)
        except CorruptRecord as exc:
            _quarantine(conn, row, exc)
            continue
        if rules.route is None:
            return record
        for name in rules.route(record, loads):
            limit = rules.server_limits.get(name, 0)
            if not limit or loads.get(name, 0) < limit:
                record.backend = {**record.backend, "server": name}
                return record
    return None


# A filter that matches at most this many tasks drives the list query from its own index (the
# candidates are then sorted by seq); a broader one is checked row by row while walking the seq
# order, which stops after one page. Both ways a page costs the same at any depth.
_SELECTIVE = 2000


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: there is none)."""
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be stored; skip to the next code point
        last = 0xE000
    return prefix[:-1] + chr(last) if last <= 0x10FFFF else None


def _list_sql(
    conn: sqlite3.Connection, query: ListQuery, below: int | None, limit: int, columns: str = _COLUMNS
) -> tuple[str, list[Any]]:
    """The SELECT for one page: the filters, keyset condition, and the best driving index."""
    where: list[str] = []
    params: list[Any] = []
    drivers: list[tuple[str, list[Any]]] = []  # subqueries giving the seqs a filter admits
    if below is not None:
        where.append("seq < ?")
        params.append(below)
    if query.state is not None:
        where.append("state = ?")
        params.append(query.state.value)
    if query.owner is not None:
        where.append("owner_subject = ? AND owner_issuer = ?")
        params += [query.owner.subject, query.owner.issuer]
    if query.name_prefix:
        # A plain prefix: compared as a substring, never as a LIKE/GLOB pattern.
        where.append("name >= ? AND substr(name, 1, ?) = ?")
        params += [query.name_prefix, len(query.name_prefix), query.name_prefix]
        upper = _prefix_upper_bound(query.name_prefix)
        if upper is not None:
            drivers.append(("SELECT seq FROM tasks WHERE name >= ? AND name < ?", [query.name_prefix, upper]))
    for tag_key, tag_value in query.tags:
        if tag_value:
            where.append(
                "EXISTS (SELECT 1 FROM task_tags t WHERE t.seq = tasks.seq AND t.key = ? AND t.value = ?)"
            )
            params += [tag_key, tag_value]
            drivers.append(("SELECT seq FROM task_tags WHERE key = ? AND value = ?", [tag_key, tag_value]))
        else:
            where.append("EXISTS (SELECT 1 FROM task_tags t WHERE t.seq = tasks.seq AND t.key = ?)")
            params.append(tag_key)
            drivers.append(("SELECT seq FROM task_tags WHERE key = ?", [tag_key]))
    best: tuple[int, str, list[Any]] | None = None
    for driver_sql, driver_params in drivers:
        (matches,) = conn.execute(
            f"SELECT count(*) FROM ({driver_sql} LIMIT {_SELECTIVE})", driver_params
        ).fetchone()
        if matches < _SELECTIVE and (best is None or matches < best[0]):
            best = (matches, driver_sql, driver_params)
    if best is not None:
        where.append(f"seq IN ({best[1]})")
        params += best[2]
    sql = f"SELECT {columns} FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    return sql, params


class SqliteTaskStore:
    """TaskStore on one SQLite file; see the module docstring for the threading and commit model."""

    # The connection class (tests substitute one that fails on purpose).
    connection_class: type[sqlite3.Connection] = sqlite3.Connection

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 30_000,
        synchronous: str = "FULL",
        call_timeout: float | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        # No call waits for ever: a batch may wait busy_timeout for another process's lock, then run.
        self._call_timeout = call_timeout if call_timeout is not None else 2 * busy_timeout_ms / 1000 + 30
        self._writer: _Lane | None = None  # writes (and reads inside CAS/claim), group-committed
        self._reader: _Lane | None = None  # get/list/count: never wait behind a write transaction
        # (event loop thread id, read-only connection) for point reads on the loop (_point_read)
        self._direct: tuple[int, sqlite3.Connection] | None = None
        self._direct_until = 0.0  # point reads go through the reader thread from then on (identity check)
        self._token_key = b""
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file at open
        self._last_purge = 0.0
        self._callback_states: frozenset[TesState] | None = None  # None: every state (outbox)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = self._start_lane(await asyncio.to_thread(self._connect), "writer")
        try:
            self._token_key = await self._call(self._init_schema, write=True)
            self._identity = await asyncio.to_thread(self._file_identity)
            reader = await asyncio.to_thread(self._connect, read_only=True)
            self._reader = self._start_lane(reader, "reader")
            self._direct = (threading.get_ident(), await asyncio.to_thread(self._connect_direct))
        except BaseException:
            await self.close()
            raise

    def _start_lane(self, conn: sqlite3.Connection, role: str) -> _Lane:
        lane = _Lane(queue.SimpleQueue())
        lane.thread = threading.Thread(
            target=self._serve, args=(lane, conn, role), name=f"sqlite-store-{role}:{self._path}", daemon=True
        )
        lane.thread.start()
        return lane

    async def close(self) -> None:
        lanes = [lane for lane in (self._writer, self._reader) if lane is not None]
        self._writer = self._reader = None
        if self._direct is not None:
            with contextlib.suppress(sqlite3.Error):
                self._direct[1].close()
            self._direct = None
        loop = asyncio.get_running_loop()
        for lane in lanes:
            if loop in lane.pending:  # operations queued in this loop iteration still run
                self._hand_over(lane, loop)
            lane.closed = True
            lane.queue.put(_STOP)
        for lane in lanes:
            if lane.thread is not None:
                await asyncio.to_thread(lane.thread.join)

    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, factory=self.connection_class
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        return conn

    def _connect_direct(self) -> sqlite3.Connection:
        """The read-only connection of the event loop's point reads: it never waits (busy timeout
        0) and is interrupted past _DIRECT_STEPS virtual-machine steps; either way the read goes
        to the reader thread instead (_point_read)."""
        conn = self._connect(read_only=True)
        conn.execute("PRAGMA busy_timeout = 0")
        conn.set_progress_handler(_interrupt, _DIRECT_STEPS)
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the database file; None for an in-memory or URI database."""
        if self._path == ":memory:" or self._path.startswith("file:"):
            return None
        st = os.stat(self._path)
        return (st.st_dev, st.st_ino)

    def _identity_problem(self) -> str | None:
        """Why the file this store opened is no longer the one at its path (deleted, replaced):
        writes would then go into a file nobody will ever open again."""
        if self._identity is None:
            return None
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return f"the SQLite file {self._path} was deleted under the running server"
        except OSError as exc:
            return f"the SQLite file {self._path} cannot be checked: {exc}"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"the SQLite file {self._path} was replaced under the running server"
        return None

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> bytes:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        _add_finished_column(conn)
        conn.execute(
            "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('page_token_key', ?), ('schema_version', '1')",
            (secrets.token_hex(32),),
        )
        _init_fair(conn)
        (key,) = conn.execute("SELECT value FROM store_meta WHERE key = 'page_token_key'").fetchone()
        return bytes.fromhex(key)

    # -- the connection thread -------------------------------------------------------------

    def _serve(self, lane: _Lane, conn: sqlite3.Connection | None, role: str) -> None:
        """The lane's thread. It survives every failure of a batch (the batch's callers get the
        error); when it cannot serve any more it sets ``lane.failure`` and answers every call with
        StoreUnavailable, so nobody waits for ever."""
        q = lane.queue
        last_identity_check = time.monotonic()
        try:
            stop = False
            while not stop:
                first = q.get()
                if first is _STOP:
                    break
                batch: list[_Op] = list(first)
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.extend(nxt)
                writes = any(op.write for op in batch)
                if lane.failure is None and (
                    writes or time.monotonic() - last_identity_check >= _IDENTITY_CHECK_SECONDS
                ):
                    last_identity_check = time.monotonic()
                    problem = self._identity_problem()
                    if problem is not None:
                        self._fail_lane(lane, problem)
                if lane.failure is None and conn is None:
                    conn = self._reconnect(lane, role)
                if lane.failure is not None or conn is None:
                    error = StoreUnavailable(f"the task store is unavailable: {lane.failure}")
                    self._deliver([_Outcome(op, error=error) for op in batch])
                    continue
                try:
                    outcomes, healthy = self._execute(conn, batch)
                except Exception as exc:
                    logger.exception("sqlite store %s: a batch failed unexpectedly", role)
                    failed = StoreError(f"database error: {exc}")
                    outcomes, healthy = [_Outcome(op, error=failed) for op in batch], False
                self._deliver(outcomes)
                if not healthy:  # the connection is in an unknown state: start a fresh one
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    conn = None
        except BaseException as exc:
            self._fail_lane(lane, f"the {role} thread died: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._fail_lane(lane, lane.failure or "the task store is closed", quiet=True)
            while True:  # nobody serves this queue any more: answer what is in it
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    error = StoreUnavailable(f"the task store is unavailable: {lane.failure}")
                    self._deliver([_Outcome(op, error=error) for op in item])
            if conn is not None:
                conn.close()

    def _reconnect(self, lane: _Lane, role: str) -> sqlite3.Connection | None:
        try:
            conn = self._connect(read_only=role == "reader")
        except sqlite3.Error as exc:
            self._fail_lane(lane, f"cannot reopen the SQLite file {self._path}: {exc}")
            return None
        logger.warning("sqlite store %s: reconnected to %s after a failed transaction", role, self._path)
        return conn

    @staticmethod
    def _fail_lane(lane: _Lane, reason: str, *, quiet: bool = False) -> None:
        if lane.failure is None:
            lane.failure = reason
            if not quiet:
                logger.error(
                    "task store unavailable: %s; restart the server once the database is back", reason
                )

    @staticmethod
    def _run_one(conn: sqlite3.Connection, op: _Op) -> _Outcome:
        try:
            return _Outcome(op, result=op.fn(conn))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            return _Outcome(op, error=exc)

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> tuple[list[_Outcome], bool]:
        """Run a batch; all writes in one transaction, committed once (group commit). Also says
        whether the connection is still in a known state (False: a ROLLBACK failed).

        Every write operation is written so that when it fails it has written nothing: one write
        statement (SQLite undoes a failed statement by itself) or it undoes its own first
        statement. That keeps one failing create (a duplicate id) from undoing the others without
        a SAVEPOINT per operation, which would cost more than the insert itself.
        """
        if not any(op.write for op in batch):
            return [self._run_one(conn, op) for op in batch], True
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            logger.warning("sqlite store: cannot begin a write transaction: %s", exc)
            failed = [_Outcome(op, error=StoreError(f"database busy or unavailable: {exc}")) for op in batch]
            return failed, not conn.in_transaction
        outcomes: list[_Outcome] = []
        try:
            for op in batch:
                outcome = self._run_one(conn, op)
                if outcome.error is not None and not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error...): the
                    # earlier operations of this batch are lost too.
                    raise sqlite3.OperationalError(f"transaction rolled back: {outcome.error}")
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            logger.warning("sqlite store: a write transaction failed: %s", exc)
            healthy = True
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:  # the thread must live on (issue 12)
                    logger.warning("sqlite store: ROLLBACK failed too: %s", rollback_exc)
                    healthy = False
            return [_Outcome(op, error=StoreError(f"database write failed: {exc}")) for op in batch], healthy
        return outcomes, True

    @staticmethod
    def _deliver(outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome.op.loop, []).append(outcome)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that event loop is closed; nobody is waiting any more
                pass

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        lane = self._writer if write else self._reader
        if lane is None:
            raise StoreError("the task store is not open")
        if lane.failure is not None:
            raise StoreUnavailable(f"the task store is unavailable: {lane.failure}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = lane.pending.get(loop)
        if pending is None:
            pending = lane.pending[loop] = []
            loop.call_soon(self._hand_over, lane, loop)
        pending.append(_Op(fn, write, loop, future))
        # A timer on the future itself, not asyncio.wait_for (which wraps it in a second future and
        # task): on the create path wait_for cost more than the hand-off (issue 15).
        timer = loop.call_later(self._call_timeout, _expire, future, self._call_timeout)
        try:
            return await future
        finally:
            timer.cancel()

    @staticmethod
    def _hand_over(lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        ops = lane.pending.pop(loop, [])
        if lane.closed or lane.failure is not None or lane.thread is None or not lane.thread.is_alive():
            error = (
                StoreError("the task store is not open")
                if lane.closed
                else StoreUnavailable(
                    f"the task store is unavailable: {lane.failure or 'its thread is gone'}"
                )
            )
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        lane.queue.put(ops)

    # -- TaskStore ---------------------------------------------------------------------------

    async def create(
        self, task: TesTask, owner: Owner | None, *, idempotency: IdempotencyKey | None = None
    ) -> TaskRecord:
        if not task.id:
            raise ValueError("task.id must be set by the caller")
        created_at = utc_now()
        task_json = task.model_dump_json(exclude_none=True)
        log_doc = new_log_doc()
        tags = list((task.tags or {}).items())
        task_id = task.id
        scope = owner_key(owner)
        purge = idempotency is not None and time.monotonic() - self._last_purge >= _PURGE_SECONDS
        callback_states = self._callback_states
        if purge:
            self._last_purge = time.monotonic()

        def insert(conn: sqlite3.Connection) -> int | TaskRecord:
            if idempotency is not None:
                now_ms = to_epoch_ms(utc_now())
                if purge:
                    conn.execute("DELETE FROM idempotency_keys WHERE expires_ms <= ?", (now_ms,))
                first = conn.execute(
                    "SELECT fingerprint, task_id FROM idempotency_keys"
                    " WHERE owner = ? AND key = ? AND expires_ms > ?",
                    (scope, idempotency.key, now_ms),
                ).fetchone()
                if first is not None:
                    if first[0] != idempotency.fingerprint:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was used for a different request body"
                        )
                    row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (first[1],)).fetchone()
                    if row is not None:
                        return _record(row)
            seq = self._insert_task(conn, task_id, task, owner, created_at, task_json, log_doc, tags)
            if callback_due(task, TesState.QUEUED, callback_states):
                queued = TaskRecord(task_id, TesState.QUEUED, task, owner, created_at, seq)
                try:
                    _outbox_insert(conn, queued, to_epoch_ms(created_at))
                except BaseException:
                    conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))  # leave nothing behind
                    raise
            if idempotency is not None:
                try:
                    conn.execute(
                        "INSERT OR REPLACE INTO idempotency_keys"
                        "(owner, key, fingerprint, task_id, expires_ms)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            scope,
                            idempotency.key,
                            idempotency.fingerprint,
                            task_id,
                            to_epoch_ms(idempotency.expires_at),
                        ),
                    )
                except BaseException:
                    conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))  # leave nothing behind
                    raise
            return seq

        outcome = await self._call(insert, write=True)
        if isinstance(outcome, TaskRecord):
            return outcome  # a replay: the first task of this key
        return TaskRecord(
            id=task_id,
            state=TesState.QUEUED,
            task=task,
            owner=owner,
            created_at=created_at,
            seq=outcome,
        )

    @staticmethod
    def _insert_task(
        conn: sqlite3.Connection,
        task_id: str,
        task: TesTask,
        owner: Owner | None,
        created_at: datetime,
        task_json: str,
        log_doc: dict[str, Any],
        tags: builtins.list[tuple[str, str]],
    ) -> int:
        """One task row and its tags; on failure nothing is left behind."""
        try:
            cursor = conn.execute(
                "INSERT INTO tasks(id, state, name, owner_subject, owner_issuer, created_at_ms, task_json,"
                " log_json, active, lease_owner, lease_expires_ms, backend_json, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, NULL, NULL, '{}', 0)",
                (
                    task_id,
                    TesState.QUEUED.value,
                    task.name,
                    owner.subject if owner else None,
                    owner.issuer if owner else None,
                    to_epoch_ms(created_at),
                    task_json,
                    json.dumps(log_doc),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateTask(f"task {task_id} exists already") from exc
        seq = int(cursor.lastrowid or 0)
        if tags:
            try:
                conn.executemany(
                    "INSERT INTO task_tags(seq, key, value) VALUES (?, ?, ?)",
                    [(seq, key, value) for key, value in tags],
                )
            except BaseException:
                conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))  # leave nothing behind
                raise
        return seq

    async def get(self, task_id: str, owner: Owner | None = None) -> TaskRecord | None:
        def read(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return _record(row) if row is not None else None

        record = await self._point_read(read)
        if record is None or not owner_matches(record.owner, owner):
            return None
        return record

    async def get_summary(self, task_id: str, owner: Owner | None = None) -> TaskSummary | None:
        """The MINIMAL view from columns: the task's JSON is not read (LeanReads)."""

        def read(conn: sqlite3.Connection) -> TaskSummary | None:
            row = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return _summary(row) if row is not None else None

        summary = await self._point_read(read)
        if summary is None or not owner_matches(summary.owner, owner):
            return None
        return summary

    async def _point_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of one row by a unique index, run on the event loop's own read-only connection
        when it can be (issue 15: the hand-off to the reader thread was ~0.1 ms of a 0.33 ms GET),
        else on the reader thread. Why the loop is never blocked (docs/store.md "GET on the event
        loop"): a WAL reader takes no lock the writer holds; the connection's busy timeout is 0 and
        a progress handler interrupts anything longer than a point read, and every sqlite3 error
        (busy, interrupted, I/O) sends the same read to the reader thread, which then handles it as
        before (reconnect, StoreUnavailable). Once a second the read goes through the thread anyway,
        so its check of the file's identity (deleted or replaced under the server) still runs."""
        direct = self._direct
        lane = self._reader
        if (
            direct is not None
            and lane is not None
            and lane.failure is None
            and direct[0] == threading.get_ident()
            and time.monotonic() < self._direct_until
        ):
            try:
                return fn(direct[1])
            except sqlite3.Error as exc:
                logger.debug(
                    "sqlite store: point read on the event loop gave %s; using the reader thread", exc
                )
        result = await self._call(fn, write=False)
        self._direct_until = time.monotonic() + _IDENTITY_CHECK_SECONDS
        return result

    async def list_summaries(self, query: ListQuery) -> SummaryPage:
        """list() for the MINIMAL view: the same query on columns only (LeanReads)."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        def read(conn: sqlite3.Connection) -> list[TaskSummary]:
            sql, params = _list_sql(conn, query, below, page_size + 1, _SUMMARY_COLUMNS)
            return [_summary(row) for row in conn.execute(sql, params)]

        return summary_page_from(await self._call(read, write=False), page_size, key, query)

    async def list_summaries_json(self, query: ListQuery) -> bytes:
        """The MINIMAL ListTasks answer itself, ``{"tasks":[{"id":..,"state":..},..],
        "next_page_token":..}``, its task array built by SQLite (json_group_array over the page's
        rows): Python only wraps the bytes (issue 15: ~5 us of Python per row before). Same query,
        order and tokens as list_summaries; a row whose state is not a TES state is handed to
        list_summaries, which reports it (CorruptRecord) as before."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        def read(conn: sqlite3.Connection) -> tuple[bytes, int, str | None, int]:
            inner, params = _list_sql(conn, query, below, page_size + 1, "seq, id, state")
            # One pass over the page's rows, fed in the inner ORDER BY seq DESC (an aggregate keeps
            # the order of its input; SQLite 3.40 has no ORDER BY inside aggregates). The seqs come
            # as text only for the token: a row_number() window to tell the extra row apart cost
            # more than the whole page (0.41 vs 0.14 ms for 256 rows).
            sql = (
                "SELECT CAST(json_group_array(json_object('id', id, 'state', state)) AS BLOB),"
                f" count(*), group_concat(seq), count(*) FILTER (WHERE state NOT IN ({_STATE_LIST}))"
                f" FROM ({inner})"
            )
            row: tuple[bytes, int, str | None, int] = conn.execute(sql, params).fetchone()
            return row

        tasks, rows, seqs, unknown_states = await self._call(read, write=False)
        token: str | None = None
        if unknown_states:  # list_summaries raises CorruptRecord for that row (unless it changed since)
            page = await self.list_summaries(query)
            tasks = json.dumps([{"id": t.id, "state": t.state.value} for t in page.summaries]).encode()
            token = page.next_page_token
        elif rows > page_size and seqs is not None:  # the extra row only says a next page exists
            # Its object is the array's last one; ',{"id":' cannot occur inside a JSON string (the
            # quote would be escaped), so this finds where it starts.
            tasks = tasks[: tasks.rindex(b',{"id":')] + b"]"
            token = encode_page_token(key, int(seqs.rsplit(",", 2)[-2]), query)
        if token is None:
            return b'{"tasks":' + tasks + b"}"
        return b'{"tasks":' + tasks + b',"next_page_token":"' + token.encode("ascii") + b'"}'

    async def list(self, query: ListQuery) -> Page:
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        budget = PageBudget(query.max_bytes)

        def read(conn: sqlite3.Connection) -> list[TaskRecord]:
            sql, params = _list_sql(conn, query, below, page_size + 1)
            records: list[TaskRecord] = []
            for row in conn.execute(sql, params):  # row by row: max_bytes bounds what is held
                if not budget.admits(stored_bytes(row[6], row[7])):
                    break
                records.append(_record(row))
            return records

        records = await self._call(read, write=False)
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
        callback_states = self._callback_states

        def change(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            record = _record(row)
            if expected is not None and record.state not in expected:
                return None
            if lease_owner is not None and record.lease_owner != lease_owner:
                return None
            previous = record.state
            log_json = row[7]
            if log is not None:
                doc = apply_log_patch(json.loads(log_json), log)
                log_json = json.dumps(doc)
                record.log = log_from_doc(doc)
            if state is not None:
                record.state = state
            if backend:
                record.backend = {**record.backend, **backend}
            if active is not None:
                record.active = active
            record.version += 1
            now_ms = to_epoch_ms(utc_now())
            changed = state is not None and state != previous
            ended = changed and states.is_final(record.state) and not states.is_final(previous)
            # An outbox event goes into the same transaction as the change (docs/callbacks.md);
            # a savepoint keeps "a failed write wrote nothing" true for the two statements.
            event = changed and callback_due(record.task, record.state, callback_states)
            if event:
                conn.execute("SAVEPOINT outbox")
            try:
                conn.execute(
                    "UPDATE tasks SET state = ?, log_json = ?, backend_json = ?, active = ?, version = ?,"
                    " finished_ms = COALESCE(finished_ms, ?) WHERE seq = ?",
                    (
                        record.state.value,
                        log_json,
                        json.dumps(record.backend),
                        int(record.active),
                        record.version,
                        now_ms if ended else None,
                        record.seq,
                    ),
                )
                if event:
                    _outbox_insert(conn, record, now_ms)
            except BaseException:
                if event and conn.in_transaction:
                    conn.execute("ROLLBACK TO outbox")
                    conn.execute("RELEASE outbox")
                raise
            if event:
                conn.execute("RELEASE outbox")
            return record

        return await self._call(change, write=True)

    async def claim(
        self, worker_id: str, now: datetime, lease_until: datetime, *, policy: ClaimPolicy | None = None
    ) -> TaskRecord | None:
        now_ms, until_ms = to_epoch_ms(now), to_epoch_ms(lease_until)
        rules = policy or ClaimPolicy()

        def take(conn: sqlite3.Connection) -> TaskRecord | None:
            # All of it inside the writer's BEGIN IMMEDIATE: the counts read here are the counts
            # every other worker on this file sees, so no limit can be passed.
            record = _take_under_way(conn, worker_id, now_ms, until_ms)
            if record is not None:
                return record
            return _take_fair(conn, worker_id, until_ms, rules)

        return await self._call(take, write=True)

    async def renew(
        self, worker_id: str, task_ids: builtins.list[str], lease_until: datetime
    ) -> builtins.list[str]:
        if not task_ids:
            return []
        until_ms = to_epoch_ms(lease_until)
        ids = list(dict.fromkeys(task_ids))

        def extend(conn: sqlite3.Connection) -> builtins.list[str]:
            held: builtins.list[str] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                held += [
                    row[0]
                    for row in conn.execute(
                        f"UPDATE tasks SET lease_expires_ms = ?, version = version + 1"
                        f" WHERE lease_owner = ? AND id IN ({marks}) RETURNING id",
                        (until_ms, worker_id, *chunk),
                    ).fetchall()
                ]
            return held

        held = set(await self._call(extend, write=True))
        return [task_id for task_id in ids if task_id in held]

    async def release(self, worker_id: str, task_id: str) -> None:
        def give_back(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_ms = NULL, version = version + 1"
                " WHERE id = ? AND lease_owner = ?",
                (task_id, worker_id),
            )

        await self._call(give_back, write=True)

    async def quota_usage(self, owner: Owner | None) -> QuotaUsage:
        subject, issuer = (owner.subject, owner.issuer) if owner is not None else (None, None)

        def read(conn: sqlite3.Connection) -> QuotaUsage:
            row = conn.execute(
                "SELECT active_n, queued_n FROM owners WHERE okey = json_array(?, ?)", (subject, issuer)
            ).fetchone()
            servers = {str(n): int(a) for n, a in conn.execute("SELECT name, active_n FROM server_load")}
            return QuotaUsage(int(row[0]) if row else 0, int(row[1]) if row else 0, servers)

        return await self._call(read, write=False)

    async def count(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])

        return await self._call(read, write=False)

    async def count_by_state(self) -> dict[TesState, int]:
        """Tasks per state (the /metrics gauge): one GROUP BY over the tasks_by_state index."""

        def read(conn: sqlite3.Connection) -> dict[TesState, int]:
            rows = conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
            return {TesState(state): int(n) for state, n in rows if state in TesState.__members__}

        return await self._call(read, write=False)

    async def get_or_create_secret(self, name: str) -> bytes:
        """In store_meta under ``secret:<name>`` (hex); INSERT OR IGNORE then read, in one write
        transaction, so concurrent first uses agree."""
        key = f"secret:{name}"

        def make(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT OR IGNORE INTO store_meta(key, value) VALUES (?, ?)", (key, secrets.token_hex(32))
            )
            (value,) = conn.execute("SELECT value FROM store_meta WHERE key = ?", (key,)).fetchone()
            return bytes.fromhex(value)

        return await self._call(make, write=True)

    # -- the callback outbox and retention (docs/callbacks.md) --------------------------------

    def record_callbacks_for(self, states: frozenset[TesState] | None) -> None:
        self._callback_states = states

    async def claim_callbacks(
        self, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[CallbackEvent]:
        now_ms, until_ms = to_epoch_ms(now), to_epoch_ms(lease_until)

        def take(conn: sqlite3.Connection) -> builtins.list[CallbackEvent]:
            # Only the oldest event of each task (no older one left): a leased head keeps the task's
            # later events back, so they are delivered in state order by whoever holds it.
            rows = conn.execute(
                "SELECT event_seq, event_id, task_id, state, url, payload, attempts, created_ms"
                " FROM callback_outbox o WHERE next_ms <= ?"
                " AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?)"
                " AND NOT EXISTS (SELECT 1 FROM callback_outbox p"
                " WHERE p.task_id = o.task_id AND p.event_seq < o.event_seq)"
                " ORDER BY next_ms, event_seq LIMIT ?",
                (now_ms, now_ms, max(1, limit)),
            ).fetchall()
            events: builtins.list[CallbackEvent] = []
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

        return await self._call(take, write=True)

    async def finish_callback(self, worker_id: str, event: CallbackEvent) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM callback_outbox WHERE event_seq = ? AND lease_owner = ?", (event.seq, worker_id)
            )
            return cursor.rowcount == 1

        return await self._call(remove, write=True)

    async def retry_callback(
        self, worker_id: str, event: CallbackEvent, next_attempt: datetime, error: str
    ) -> bool:
        def again(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE callback_outbox SET attempts = attempts + 1, next_ms = ?, lease_owner = NULL,"
                " lease_expires_ms = NULL, last_error = ? WHERE event_seq = ? AND lease_owner = ?",
                (to_epoch_ms(next_attempt), error[:1000], event.seq, worker_id),
            )
            return cursor.rowcount == 1

        return await self._call(again, write=True)

    async def pending_callbacks(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM callback_outbox").fetchone()[0])

        return await self._call(read, write=False)

    async def take_lease(self, name: str, worker_id: str, now: datetime, until: datetime) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO store_leases(name, owner, expires_ms) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms"
                " WHERE store_leases.owner = excluded.owner OR store_leases.expires_ms <= ?",
                (name, worker_id, to_epoch_ms(until), to_epoch_ms(now)),
            )
            (owner,) = conn.execute("SELECT owner FROM store_leases WHERE name = ?", (name,)).fetchone()
            return bool(owner == worker_id)

        return await self._call(take, write=True)

    async def delete_finished(self, ended_before: datetime, limit: int) -> builtins.list[str]:
        cutoff = to_epoch_ms(ended_before)

        def delete(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute(
                "SELECT seq, id FROM tasks WHERE finished_ms IS NOT NULL AND finished_ms <= ? AND active = 0"
                " AND NOT EXISTS (SELECT 1 FROM callback_outbox o WHERE o.task_id = tasks.id)"
                " ORDER BY finished_ms LIMIT ?",
                (cutoff, max(1, limit)),
            ).fetchall()
            if not rows:
                return []
            marks = ",".join("?" * len(rows))
            # One statement (task_tags go with it: ON DELETE CASCADE), so a failure deletes nothing.
            conn.execute(f"DELETE FROM tasks WHERE seq IN ({marks})", [row[0] for row in rows])
            return [str(row[1]) for row in rows]

        return await self._call(delete, write=True)
