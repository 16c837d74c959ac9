"""The SQLite store's schema: the tables and indexes, and the migrations that bring a file written
by an older version up to date when the store opens it.

Layout: ``tasks`` (one row per task, the submitted task and the log as JSON text, the filter
columns beside them) and ``task_tags`` (one row per tag, for exact tag filtering through an
index); ``store_meta`` (the page-token key, named secrets), ``idempotency_keys``,
``callback_outbox``, ``store_leases``; the fair-claim columns, tables and triggers are fair.py's.
See docs/store.md.

Why every statement is idempotent (IF NOT EXISTS, a column added only when missing): every process
that opens the file runs all of it, in one write transaction, whatever version wrote the file.
"""

from __future__ import annotations

import secrets
import sqlite3

from tesp_api.store.lean import split_log_json, split_task_json
from tesp_api.store.records import DECODE_ERRORS, to_epoch_ms, utc_now
from tesp_api.store.sqlite.fair import init_fair
from tesp_api.tes import states
from tesp_api.tes.models import TesState

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
CREATE TABLE IF NOT EXISTS process_snapshots (
    kind TEXT NOT NULL, holder TEXT NOT NULL, payload TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, holder)
);
"""


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
# Rows that may hold a heavy part in their light texts (a file written before the split); any other
# row is already split (it has nothing heavy). A substring test only preselects: split_* decide.
_MAYBE_HEAVY = (
    "(instr(task_json, '\"content\"') > 0 OR instr(log_json, '\"system_logs\"') > 0"
    " OR instr(log_json, '\"stdout\"') > 0 OR instr(log_json, '\"stderr\"') > 0)"
)
_MIGRATE_BATCH = 500


def _add_lean_columns(conn: sqlite3.Connection) -> None:
    """``tasks.content_json`` and ``tasks.log_text_json``, the heavy parts BASIC does not show
    (store/lean.py). A file written before them gets the columns and every row is split, in the
    open's one write transaction: all rows or none. A row whose texts do not decode is kept exactly
    as it is (reads report it as CorruptRecord, as before; nothing is lost)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "content_json" in columns and "log_text_json" in columns:
        return
    for name in ("content_json", "log_text_json"):
        if name not in columns:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} TEXT")
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT seq, task_json, log_json FROM tasks WHERE seq > ? AND {_MAYBE_HEAVY} ORDER BY seq LIMIT ?",
            (after, _MIGRATE_BATCH),
        ).fetchall()
        if not rows:
            return
        for seq, task_json, log_json in rows:
            after = seq
            try:
                light_task, contents = split_task_json(task_json)
                light_log, texts = split_log_json(log_json)
            except DECODE_ERRORS:
                continue
            conn.execute(
                "UPDATE tasks SET task_json = ?, content_json = ?, log_json = ?, log_text_json = ? WHERE seq = ?",
                (light_task, contents, light_log, texts, seq),
            )


def init_schema(conn: sqlite3.Connection) -> bytes:
    """Create or migrate everything (in the writer's transaction at open); the page-token key."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    _add_finished_column(conn)
    _add_lean_columns(conn)
    conn.execute(
        "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('page_token_key', ?), ('schema_version', '1')",
        (secrets.token_hex(32),),
    )
    init_fair(conn)
    (key,) = conn.execute("SELECT value FROM store_meta WHERE key = 'page_token_key'").fetchone()
    return bytes.fromhex(key)
