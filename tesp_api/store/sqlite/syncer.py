"""The writer's fsync, done after the write lock is released: a pipelined group commit (issue 15).

Why: with ``synchronous=FULL`` SQLite fsyncs the WAL inside ``COMMIT``, that is while it holds the
write lock (and our flock queue, writer_queue.py): one process's writer cannot start its next batch
until the fsync ends, and the processes of one file serialise on each other's fsyncs. Instead the
writer connection runs at ``synchronous=NORMAL`` (its commit writes the WAL frames into the page
cache, no fsync), releases the locks, and hands the batch's outcomes to this thread, which
fdatasyncs the ``-wal`` file and only then answers the callers. Meanwhile the writer runs the next
batch; batches that commit during an fsync are covered by the next one (one fsync of the file
covers every commit before it, of any process). The durability argument, with SQLite's rules it
relies on, is in docs/store.md ("Durable commits: the fsync after the lock").

A failed fsync (EIO) is final (a failed fsync cannot be retried: the kernel may have dropped the
dirty pages, "fsyncgate"): the batches waiting for it and every later one are refused, never
answered with success, and the store reports itself unavailable (``on_failure``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_STOP = object()


class WalSyncer(Generic[T]):
    """The thread that makes committed batches durable before they are answered.

    ``settle(items, failure)`` answers one batch's items: with their outcomes when ``failure`` is
    None, else with that reason as an error. Batches are settled in the order they were submitted.
    """

    def __init__(
        self,
        wal_path: str,
        settle: Callable[[list[T], str | None], None],
        on_failure: Callable[[str], None],
        sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self._wal_path = wal_path
        self._settle = settle
        self._on_failure = on_failure
        self._sync = sync
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._failure: str | None = None
        self._synced_file: tuple[int, int] | None = None  # (st_dev, st_ino) whose directory entry is synced
        self._thread = threading.Thread(target=self._run, name=f"sqlite-store-syncer:{wal_path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, items: list[T], committed: bool) -> None:
        """Settle ``items`` once every commit before now is durable (at once-ish when nothing
        committed is waiting: an uncommitted batch still waits for the committed ones before it,
        so answers keep their order and none reveals a write that is not yet durable)."""
        self._queue.put((items, committed))

    def stop(self) -> None:
        """Settle what was submitted, then end the thread (after the writer thread stopped)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batches = [first]
            while True:  # every batch that committed while the last fsync ran: one fsync for all
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batches.append(nxt)
            if self._failure is None and any(committed for _, committed in batches):
                try:
                    self._sync_wal()
                except OSError as exc:
                    self._failure = (
                        f"fsync of {self._wal_path} failed ({exc}): committed writes may not be durable"
                    )
                    self._on_failure(self._failure)
            for items, _ in batches:
                self._settle(items, self._failure)

    def _sync_wal(self) -> None:
        """fdatasync the WAL through a descriptor of our own (opened each time: it is always the
        file at the path now); a WAL file not synced before also gets its directory entry synced,
        as SQLite does on a WAL's first sync (a new file's name is not durable without it)."""
        fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._sync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != self._synced_file:
            directory = os.path.dirname(self._wal_path) or "."
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._sync(dfd)
            finally:
                os.close(dfd)
            self._synced_file = (st.st_dev, st.st_ino)
