"""A queue of the processes that write one SQLite file: a ``flock`` on a lock file beside it.

Why: SQLite lets one connection at a time write (``BEGIN IMMEDIATE`` takes the write lock). A
connection that finds the lock taken by another process does not wait for it to be freed: its busy
handler (``busy_timeout``) *sleeps* 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms and tries again.
With two API processes (``api.workers = 2``) creating tasks, each writer thread spent about 40 % of
its time in those sleeps (strace: 338 sleeps of 19 ms on average in 8 s), long after the other
process had committed, and two processes created no more tasks than one (docs/benchmarks.md,
"Several API processes").

Here every store's writer thread takes an exclusive ``flock`` on ``<database>-writer.lock`` around
each write transaction, blocking; the kernel wakes the waiter the moment the holder releases it,
so the next process starts its transaction within microseconds instead of after a sleep. SQLite's
own locking is unchanged and still decides who may write: a connection that does not take this
lock (the sqlite3 shell, an older server) is as safe as before and only waits the old way.

* ``flock``, not ``fcntl`` record locks: a POSIX record lock belongs to the process and is dropped
  when *any* descriptor of the file is closed, so it cannot share a process with SQLite's own
  record locks; a ``flock`` belongs to the open file description, here one per store.
* A holder that dies (kill -9, a crash) cannot block the others: the kernel releases a ``flock``
  when the last descriptor of it is closed, which the death of the process does.
* The wait has no time limit of its own (``flock`` has none): the lock is held only for the
  duration of one write transaction. A holder that hangs in one (a process stopped with SIGSTOP)
  stalls the other processes' writes until it goes on or dies, as SQLite's lock did; their callers
  get a StoreError after the store's call timeout.
* The lock file is created with mode 0600, so only the server's own user can take it (anyone who
  can open it could otherwise stall every writer). When it cannot be opened (another user's file,
  a read-only directory) or the file system refuses ``flock``, the store logs it once and writes
  without the queue.
"""

from __future__ import annotations

import fcntl
import logging
import os

logger = logging.getLogger(__name__)

LOCK_SUFFIX = "-writer.lock"


class WriterQueue:
    """The cross-process writer lock of one SQLite file, for the store's writer thread only."""

    def __init__(self, database_path: str) -> None:
        self._path = database_path + LOCK_SUFFIX
        self._fd: int | None = None
        self._held = False

    @staticmethod
    def for_database(database_path: str) -> WriterQueue | None:
        """None for databases no other process can open (in-memory, ``file:`` URIs)."""
        if database_path == ":memory:" or database_path.startswith("file:"):
            return None
        return WriterQueue(database_path)

    def open(self) -> bool:
        """Open (create) the lock file; False, logged, when it cannot be used."""
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            self._give_up(f"cannot open it: {exc}")
            return False
        return True

    def acquire(self) -> None:
        """Wait (blocking, woken by the kernel) until this is the only writer among the processes
        using the queue. Without an open lock file it returns at once; a file system that refuses
        ``flock`` (ENOLCK, EOPNOTSUPP) turns the queue off instead of failing the writes."""
        if self._fd is None or self._held:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._give_up(f"flock failed: {exc}")
            return
        self._held = True

    def release(self) -> None:
        if self._fd is None or not self._held:
            return
        self._held = False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            self._give_up(f"unlock failed: {exc}")  # closing the descriptor releases it

    def _give_up(self, reason: str) -> None:
        logger.warning(
            "sqlite store: the writer lock %s cannot be used (%s): writing without it"
            " (other processes' writes are then waited for by SQLite's busy handler)",
            self._path,
            reason,
        )
        self.close()

    def close(self) -> None:
        """Close the descriptor (which releases the lock if held)."""
        if self._fd is not None:
            fd, self._fd, self._held = self._fd, None, False
            os.close(fd)
