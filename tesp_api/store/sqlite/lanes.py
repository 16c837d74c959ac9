"""The SQLite store's threads: how it stays off the event loop and how its writes commit.

Two dedicated threads, each owning one connection, execute operations taken from their queue;
coroutines wait on a future. The *reader* (get, list, count; ``query_only``) never waits behind a
write transaction, WAL lets it read while another connection or process writes. The *writer*
(create, update, claim, renew, release) does **group commit**: it drains every operation queued
while the previous batch ran and executes the batch inside ONE ``BEGIN IMMEDIATE`` transaction and
commits once; a failing write (a duplicate id) writes nothing and does not undo the others (see
``_execute``). Under load, dozens of creates share one commit, which is what makes the create
endpoint fast; with one client, a batch is one operation and nothing waits. ``BEGIN IMMEDIATE``
takes the write lock up front, so a compare-and-set or a claim reads and writes under the lock even
when other processes use the same file (they wait up to ``busy_timeout``); the processes of one
file take turns through a ``flock`` queue first (writer_queue.py), woken as soon as the other
has committed, rather than by the busy handler's sleeps. ``synchronous=FULL`` by
default: a create that answered 200 survives a power loss too. The fsync is not done inside
``COMMIT`` (under the write lock) but after it, by a syncer thread (syncer.py), before the batch's
callers are answered: the writer connection runs at SQLite's ``NORMAL`` and the next batch commits
while the previous one's fsync runs (docs/store.md "Durable commits: the fsync after the lock").
``NORMAL`` (setting ``db.sqlite_synchronous``) means no fsync at all: it trades the last
transactions before a power loss for speed. Point reads by id may run on the event loop's
own read-only connection instead (``_point_read``).

Why a module of its own: this is the machinery every operation goes through and nothing here
knows what a task is; SqliteLanes is the base of the store (store.py), which only hands it
functions of a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from tesp_api.store.port import StoreError, StoreUnavailable
from tesp_api.store.sqlite.syncer import WalSyncer
from tesp_api.store.sqlite.writer_queue import WriterQueue

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH = 512
_STOP = object()
_IDENTITY_CHECK_SECONDS = 1.0  # reads look at the file's identity at most this often (writes: every batch)
# A point read by a unique index runs a few dozen SQLite VM instructions; past this many, the read on
# the event loop is interrupted and goes to the reader thread (_point_read).
_DIRECT_STEPS = 2000


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
    # The writer's, when its commits are made durable after the lock (syncer.py): every outcome of
    # the lane is answered through it, in order.
    syncer: WalSyncer[_Outcome] | None = None


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    """The store's thread did not answer in time: the caller gets a StoreError (the operation may
    still happen; its late outcome is dropped by _settle)."""
    if not future.done():
        future.set_exception(StoreError(f"the task store did not answer within {timeout:g} s"))


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _interrupt() -> int:
    """SQLite progress handler: non-zero interrupts the statement (sqlite3.OperationalError)."""
    return 1


def _top_up(q: queue.SimpleQueue[Any], batch: list[_Op]) -> bool:
    """Move what is queued into ``batch`` (in place, up to _MAX_BATCH); whether _STOP was met."""
    while len(batch) < _MAX_BATCH:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            return False
        if nxt is _STOP:
            return True
        batch.extend(nxt)
    return False


def _settle(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        future = outcome.op.future
        if future.done():  # the caller gave up (cancelled); the operation still happened
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)


class SqliteLanes:
    """The writer and reader lanes and the event loop's point-read connection on one SQLite file;
    see the module docstring for the threading and commit model."""

    # The connection class (tests substitute one that fails on purpose).
    connection_class: type[sqlite3.Connection] = sqlite3.Connection
    # How the syncer makes the WAL durable (tests substitute one that blocks or fails with EIO).
    wal_sync: Callable[[int], None] = staticmethod(os.fdatasync)

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
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file at open
        # Other processes writing the same file queue behind a flock and are woken when it is
        # free, instead of polling SQLite's lock through the busy handler's sleeps (writer_queue.py).
        self._writer_queue = WriterQueue.for_database(path)
        # FULL on a file: the writer commits at NORMAL and the syncer fsyncs this WAL after the lock.
        self._wal_path: str | None = None
        if synchronous == "FULL" and path != ":memory:" and not path.startswith("file:"):
            self._wal_path = os.path.abspath(path) + "-wal"
        self._writer_in_wal = False  # the writer connection is in WAL mode at NORMAL (else: FULL, no syncer)

    # -- lifecycle -------------------------------------------------------------------------

    async def _open_lanes(self, init: Callable[[sqlite3.Connection], T]) -> T:
        """Start the writer, run ``init`` (the schema) on it, then start the reader and open the
        event loop's point-read connection; on any failure close what was started. ``init``'s result."""
        if self._writer_queue is not None:
            await asyncio.to_thread(self._writer_queue.open)
        self._writer = self._start_lane(await asyncio.to_thread(self._connect), "writer")
        try:
            result = await self._call(init, write=True)
            self._identity = await asyncio.to_thread(self._file_identity)
            reader = await asyncio.to_thread(self._connect, read_only=True)
            self._reader = self._start_lane(reader, "reader")
            self._direct = (threading.get_ident(), await asyncio.to_thread(self._connect_direct))
        except BaseException:
            await self.close()
            raise
        return result

    def _start_lane(self, conn: sqlite3.Connection, role: str) -> _Lane:
        lane = _Lane(queue.SimpleQueue())
        if role == "writer" and self._wal_path is not None:
            lane.syncer = WalSyncer(
                self._wal_path,
                self._settle_synced,
                lambda reason: self._fail_lane(lane, reason),
                type(self).wal_sync,
            )
            lane.syncer.start()
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
        if self._writer_queue is not None:
            self._writer_queue.close()  # after the writer thread ended: no transaction holds it

    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, factory=self.connection_class
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        (mode,) = self._set_wal_mode(conn)
        synchronous = self._synchronous
        if not read_only and self._wal_path is not None:
            # The writer: at NORMAL its COMMIT does not fsync; the syncer does, after the lock. Only
            # in WAL mode (NORMAL in a rollback journal could corrupt the file on power loss).
            self._writer_in_wal = str(mode).lower() == "wal"
            if self._writer_in_wal:
                synchronous = "NORMAL"
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        return conn

    def _set_wal_mode(self, conn: sqlite3.Connection) -> tuple[str]:
        """``PRAGMA journal_mode = WAL``, tried again while the file is locked. On a new file two
        processes opening it at once (the API processes of api.workers) both switch it from the
        rollback journal: the switch reads, then needs the exclusive lock, and SQLite answers the
        loser "database is locked" AT ONCE, without the busy handler (it would deadlock waiting);
        one open in ten failed so. Once the file is in WAL mode the pragma takes no lock."""
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_locked),
            wait=tenacity.wait_random(0.005, 0.05),
            stop=tenacity.stop_after_delay(self._busy_timeout_ms / 1000),
            reraise=True,
        ):
            with attempt:
                row: tuple[str] = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        return row

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

    # -- the connection thread -------------------------------------------------------------

    def _serve(self, lane: _Lane, conn: sqlite3.Connection | None, role: str) -> None:
        """The lane's thread. It survives every failure of a batch (the batch's callers get the
        error); when it cannot serve any more it sets ``lane.failure`` and answers every call with
        StoreUnavailable, so nobody waits for ever."""
        q = lane.queue
        last_identity_check = time.monotonic()
        syncer = lane.syncer

        def deliver(outcomes: list[_Outcome], committed: bool) -> None:
            if syncer is None:
                self._deliver(outcomes)
            else:  # answered once durable, in order (syncer.py)
                syncer.submit(outcomes, committed and self._writer_in_wal)

        try:
            stop = False
            while not stop:
                first = q.get()
                if first is _STOP:
                    break
                batch: list[_Op] = list(first)
                stop = _top_up(q, batch)
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
                    deliver([_Outcome(op, error=error) for op in batch], False)
                    continue
                try:
                    outcomes, healthy, committed = self._execute(conn, batch, q)
                except Exception as exc:
                    logger.exception("sqlite store %s: a batch failed unexpectedly", role)
                    failed = StoreError(f"database error: {exc}")
                    # It may have committed before failing: wait for a sync all the same.
                    outcomes, healthy, committed = [_Outcome(op, error=failed) for op in batch], False, True
                deliver(outcomes, committed)
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
                    deliver([_Outcome(op, error=error) for op in item], False)
            if syncer is not None:
                syncer.stop()  # answers every batch still waiting for its fsync
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

    def _execute(
        self, conn: sqlite3.Connection, batch: list[_Op], q: queue.SimpleQueue[Any] | None = None
    ) -> tuple[list[_Outcome], bool, bool]:
        """Run a batch; all writes in one transaction, committed once (group commit). Also says
        whether the connection is still in a known state (False: a ROLLBACK failed) and whether
        the batch committed (its answers then wait for the syncer's fsync).

        Every write operation is written so that when it fails it has written nothing: one write
        statement (SQLite undoes a failed statement by itself) or it undoes its own first
        statement. That keeps one failing create (a duplicate id) from undoing the others without
        a SAVEPOINT per operation, which would cost more than the insert itself.
        """
        if not any(op.write for op in batch):
            return [self._run_one(conn, op) for op in batch], True, False
        writers = self._writer_queue
        if writers is None:
            return self._transaction(conn, batch)
        writers.acquire()  # our turn among the processes: SQLite's write lock is then free
        try:
            # What was queued while we waited for our turn joins this commit instead of waiting a
            # whole turn more (with two processes a turn is the other one's commit and fsync).
            if q is not None and _top_up(q, batch):
                q.put(_STOP)  # seen while topping up: the thread stops after this batch
            return self._transaction(conn, batch)
        finally:
            writers.release()

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Op]) -> tuple[list[_Outcome], bool, bool]:
        """The batch in one BEGIN IMMEDIATE ... COMMIT; the rules are _execute's."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            logger.warning("sqlite store: cannot begin a write transaction: %s", exc)
            failed = [_Outcome(op, error=StoreError(f"database busy or unavailable: {exc}")) for op in batch]
            return failed, not conn.in_transaction, False
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
            failed = [_Outcome(op, error=StoreError(f"database write failed: {exc}")) for op in batch]
            return failed, healthy, False
        return outcomes, True, True

    def _settle_synced(self, outcomes: list[_Outcome], failure: str | None) -> None:
        """The syncer's answer to one batch: its outcomes once durable; after a failed fsync an
        error instead (StoreUnavailable, a StoreError: the lane is failed for good), success never
        (the write may be committed, yet not durable)."""
        if failure is not None:
            error = StoreUnavailable(f"the task store cannot make writes durable: {failure}")
            outcomes = [_Outcome(o.op, error=error) for o in outcomes]
        self._deliver(outcomes)

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
