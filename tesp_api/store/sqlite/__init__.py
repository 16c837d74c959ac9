"""The embedded task store on one SQLite file (docs/store.md).

The modules, each small enough to read at once:

- ``store``: SqliteTaskStore, the facade that wires the others (and the task writes);
- ``lanes``: the reader and writer threads, group commit, the event loop's point reads;
- ``schema``: tables, indexes, and the migrations of files written by older versions;
- ``rows``: the task row's columns and its decoding;
- ``reads``: the list query and every read built on it;
- ``fair``: fair claiming (slots, counters, triggers, the claim);
- ``outbox``: the callback outbox, named leases, retention.
"""

from tesp_api.store.sqlite.store import SqliteTaskStore

__all__ = ["SqliteTaskStore"]
