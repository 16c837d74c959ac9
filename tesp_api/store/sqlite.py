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
import json
import logging
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from tesp_api.store.cursor import PageBudget, decode_page_token, page_from, stored_bytes
from tesp_api.store.port import (
    DuplicateTask,
    ListQuery,
    LogPatch,
    Owner,
    Page,
    StoreError,
    TaskRecord,
)
from tesp_api.store.records import (
    apply_log_patch,
    from_epoch_ms,
    log_from_doc,
    new_log_doc,
    owner_matches,
    to_epoch_ms,
    utc_now,
)
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
"""

_COLUMNS = (
    "seq, id, state, owner_subject, owner_issuer, created_at_ms, task_json, log_json, active,"
    " lease_owner, lease_expires_ms, backend_json, version"
)

_MAX_BATCH = 512
_STOP = object()


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
    thread: threading.Thread
    pending: dict[asyncio.AbstractEventLoop, list[_Op]] = field(default_factory=dict)
    closed: bool = False


def _settle(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        future = outcome.op.future
        if future.done():  # the caller gave up (cancelled); the operation still happened
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)


def _record(row: tuple[Any, ...]) -> TaskRecord:
    (seq, task_id, state, subject, issuer, created_ms, task_json, log_json, active, lease_owner,
     lease_ms, backend_json, version) = row
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


def _list_sql(conn: sqlite3.Connection, query: ListQuery, below: int | None, limit: int) -> tuple[str, list[Any]]:
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
            where.append("EXISTS (SELECT 1 FROM task_tags t WHERE t.seq = tasks.seq AND t.key = ? AND t.value = ?)")
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
    sql = f"SELECT {_COLUMNS} FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    return sql, params


class SqliteTaskStore:
    """TaskStore on one SQLite file; see the module docstring for the threading and commit model."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 30_000, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._writer: _Lane | None = None  # writes (and reads inside CAS/claim), group-committed
        self._reader: _Lane | None = None  # get/list/count: never wait behind a write transaction
        self._token_key = b""

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = self._start_lane(await asyncio.to_thread(self._connect), "writer")
        try:
            self._token_key = await self._call(self._init_schema, write=True)
            reader = await asyncio.to_thread(self._connect)
            reader.execute("PRAGMA query_only = ON")
            self._reader = self._start_lane(reader, "reader")
        except BaseException:
            await self.close()
            raise

    def _start_lane(self, conn: sqlite3.Connection, role: str) -> _Lane:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._serve, args=(conn, q), name=f"sqlite-store-{role}:{self._path}", daemon=True
        )
        thread.start()
        return _Lane(q, thread)

    async def close(self) -> None:
        lanes = [lane for lane in (self._writer, self._reader) if lane is not None]
        self._writer = self._reader = None
        loop = asyncio.get_running_loop()
        for lane in lanes:
            if loop in lane.pending:  # operations queued in this loop iteration still run
                self._hand_over(lane, loop)
            lane.closed = True
            lane.queue.put(_STOP)
        for lane in lanes:
            await asyncio.to_thread(lane.thread.join)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> bytes:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('page_token_key', ?), ('schema_version', '1')",
            (secrets.token_hex(32),),
        )
        (key,) = conn.execute("SELECT value FROM store_meta WHERE key = 'page_token_key'").fetchone()
        return bytes.fromhex(key)

    # -- the connection thread -------------------------------------------------------------

    def _serve(self, conn: sqlite3.Connection, q: queue.SimpleQueue[Any]) -> None:
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
                self._deliver(self._execute(conn, batch))
        finally:
            conn.close()

    @staticmethod
    def _run_one(conn: sqlite3.Connection, op: _Op) -> _Outcome:
        try:
            return _Outcome(op, result=op.fn(conn))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            return _Outcome(op, error=exc)

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[_Outcome]:
        """Run a batch; all writes in one transaction, committed once (group commit).

        Every write operation is written so that when it fails it has written nothing: one write
        statement (SQLite undoes a failed statement by itself) or it undoes its own first
        statement. That keeps one failing create (a duplicate id) from undoing the others without
        a SAVEPOINT per operation, which would cost more than the insert itself.
        """
        if not any(op.write for op in batch):
            return [self._run_one(conn, op) for op in batch]
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            logger.warning("sqlite store: cannot begin a write transaction: %s", exc)
            return [_Outcome(op, error=StoreError(f"database busy or unavailable: {exc}")) for op in batch]
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
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [_Outcome(op, error=StoreError(f"database write failed: {exc}")) for op in batch]
        return outcomes

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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = lane.pending.get(loop)
        if pending is None:
            pending = lane.pending[loop] = []
            loop.call_soon(self._hand_over, lane, loop)
        pending.append(_Op(fn, write, loop, future))
        return await future

    @staticmethod
    def _hand_over(lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        ops = lane.pending.pop(loop, [])
        if lane.closed:
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(StoreError("the task store is not open"))
            return
        lane.queue.put(ops)

    # -- TaskStore ---------------------------------------------------------------------------

    async def create(self, task: TesTask, owner: Owner | None) -> TaskRecord:
        if not task.id:
            raise ValueError("task.id must be set by the caller")
        created_at = utc_now()
        task_json = task.model_dump_json(exclude_none=True)
        log_doc = new_log_doc()
        tags = list((task.tags or {}).items())
        task_id = task.id

        def insert(conn: sqlite3.Connection) -> int:
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

        seq = await self._call(insert, write=True)
        return TaskRecord(
            id=task_id,
            state=TesState.QUEUED,
            task=task,
            owner=owner,
            created_at=created_at,
            seq=seq,
        )

    async def get(self, task_id: str, owner: Owner | None = None) -> TaskRecord | None:
        def read(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return _record(row) if row is not None else None

        record = await self._call(read, write=False)
        if record is None or not owner_matches(record.owner, owner):
            return None
        return record

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
        def change(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            record = _record(row)
            if expected is not None and record.state not in expected:
                return None
            if lease_owner is not None and record.lease_owner != lease_owner:
                return None
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
            conn.execute(
                "UPDATE tasks SET state = ?, log_json = ?, backend_json = ?, active = ?, version = ?"
                " WHERE seq = ?",
                (
                    record.state.value,
                    log_json,
                    json.dumps(record.backend),
                    int(record.active),
                    record.version,
                    record.seq,
                ),
            )
            return record

        return await self._call(change, write=True)

    async def claim(self, worker_id: str, now: datetime, lease_until: datetime) -> TaskRecord | None:
        now_ms, until_ms = to_epoch_ms(now), to_epoch_ms(lease_until)

        def take(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE active = 1"
                " AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?) ORDER BY seq LIMIT 1",
                (now_ms,),
            ).fetchone()
            if row is None:
                return None
            record = _record(row)
            record.lease_owner = worker_id
            record.lease_expires = from_epoch_ms(until_ms)
            record.version += 1
            conn.execute(
                "UPDATE tasks SET lease_owner = ?, lease_expires_ms = ?, version = ? WHERE seq = ?",
                (worker_id, until_ms, record.version, record.seq),
            )
            return record

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

    async def count(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])

        return await self._call(read, write=False)
