"""SqliteTaskStore: the embedded task store, one SQLite file, no server (the default of
``tesp-api serve``).

Why SQLite: it is in the standard library, keeps tasks across restarts in one file, and with WAL
several processes (an API server and separate workers) can share that file safely.

This module is the facade: each TaskStore method turns its arguments into a function of a
connection (the SQL lives in reads.py, fair.py, outbox.py, or here for the task writes) and runs
it on the writer or the reader lane (lanes.py). The schema is schema.py's.
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
import time
from datetime import datetime
from typing import Any

from tesp_api.store.cursor import (
    PageBudget,
    decode_page_token,
    encode_page_token,
    page_from,
    summary_page_from,
    view_page_json,
)
from tesp_api.store.lean import join_log, split_log, split_task
from tesp_api.store.port import (
    CallbackEvent,
    ClaimPolicy,
    DuplicateTask,
    IdempotencyConflict,
    IdempotencyKey,
    ListQuery,
    LogPatch,
    Owner,
    Page,
    QuotaUsage,
    SummaryPage,
    TaskRecord,
    TaskSummary,
)
from tesp_api.store.records import (
    apply_log_patch,
    callback_due,
    log_from_doc,
    new_log_doc,
    owner_key,
    owner_matches,
    to_epoch_ms,
    utc_now,
)
from tesp_api.store.sqlite import outbox, reads
from tesp_api.store.sqlite.fair import take_fair, take_under_way
from tesp_api.store.sqlite.lanes import SqliteLanes
from tesp_api.store.sqlite.rows import COLUMNS, to_record
from tesp_api.store.sqlite.schema import init_schema
from tesp_api.tes import states
from tesp_api.tes.models import TesState, TesTask

_PURGE_SECONDS = 60.0  # expired idempotency keys are deleted at most this often


class SqliteTaskStore(SqliteLanes):
    """TaskStore on one SQLite file; lanes.py explains the threading and commit model."""

    # Set at open / by record_callbacks_for; the constructor is SqliteLanes' (path and timeouts).
    _token_key: bytes = b""
    _last_purge: float = 0.0  # when expired idempotency keys were last deleted (monotonic)
    _callback_states: frozenset[TesState] | None = None  # None: every state (outbox)

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._token_key = await self._open_lanes(init_schema)

    # -- TaskStore ---------------------------------------------------------------------------

    async def create(
        self, task: TesTask, owner: Owner | None, *, idempotency: IdempotencyKey | None = None
    ) -> TaskRecord:
        if not task.id:
            raise ValueError("task.id must be set by the caller")
        created_at = utc_now()
        task_json, content_json = split_task(task)  # the heavy input contents apart (store/lean.py)
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
                    row = conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (first[1],)).fetchone()
                    if row is not None:
                        return to_record(row)
            seq = self._insert_task(
                conn, task_id, task, owner, created_at, (task_json, content_json), log_doc, tags
            )
            if callback_due(task, TesState.QUEUED, callback_states):
                queued = TaskRecord(task_id, TesState.QUEUED, task, owner, created_at, seq)
                try:
                    outbox.insert_event(conn, queued, to_epoch_ms(created_at))
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
        task_texts: tuple[str, str | None],
        log_doc: dict[str, Any],
        tags: builtins.list[tuple[str, str]],
    ) -> int:
        """One task row and its tags; on failure nothing is left behind. ``task_texts``: the
        light task and its contents (split_task)."""
        light_log, log_texts = split_log(log_doc)
        try:
            cursor = conn.execute(
                "INSERT INTO tasks(id, state, name, owner_subject, owner_issuer, created_at_ms, task_json,"
                " log_json, active, lease_owner, lease_expires_ms, backend_json, version, content_json,"
                " log_text_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, NULL, NULL, '{}', 0, ?, ?)",
                (
                    task_id,
                    TesState.QUEUED.value,
                    task.name,
                    owner.subject if owner else None,
                    owner.issuer if owner else None,
                    to_epoch_ms(created_at),
                    task_texts[0],
                    light_log,
                    task_texts[1],
                    log_texts,
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
        record = await self._point_read(lambda conn: reads.get_record(conn, task_id))
        if record is None or not owner_matches(record.owner, owner):
            return None
        return record

    async def get_summary(self, task_id: str, owner: Owner | None = None) -> TaskSummary | None:
        """The MINIMAL view from columns: the task's JSON is not read (LeanReads)."""
        summary = await self._point_read(lambda conn: reads.get_summary(conn, task_id))
        if summary is None or not owner_matches(summary.owner, owner):
            return None
        return summary

    async def list_summaries(self, query: ListQuery) -> SummaryPage:
        """list() for the MINIMAL view: the same query on columns only (LeanReads)."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        found = await self._call(lambda conn: reads.summaries(conn, query, below, page_size + 1), write=False)
        return summary_page_from(found, page_size, key, query)

    async def list_summaries_json(self, query: ListQuery) -> bytes:
        """The MINIMAL ListTasks answer itself, ``{"tasks":[{"id":..,"state":..},..],
        "next_page_token":..}``, its task array built by SQLite (json_group_array over the page's
        rows): Python only wraps the bytes (issue 15: ~5 us of Python per row before). Same query,
        order and tokens as list_summaries; a row whose state is not a TES state is handed to
        list_summaries, which reports it (CorruptRecord) as before."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        tasks, rows, seqs, unknown_states = await self._call(
            lambda conn: reads.summaries_json(conn, query, below, page_size + 1), write=False
        )
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

    async def get_basic_json(self, task_id: str, owner: Owner | None = None) -> bytes | None:
        """The BASIC view's JSON, read from the light texts only (store/lean.py, issue 15)."""
        return await self._point_read(lambda conn: reads.get_basic(conn, task_id, owner))

    async def list_basic_json(self, query: ListQuery) -> bytes:
        """The BASIC ListTasks answer: the same query, order and tokens as list(), each task
        rendered from its light texts only (no input content, stdout/stderr or system logs read)."""
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)
        budget = PageBudget(query.max_bytes)
        views, seqs = await self._call(
            lambda conn: reads.basics(conn, query, below, page_size + 1, budget), write=False
        )
        return view_page_json(views, seqs, page_size, key, query, cut=budget.cut)

    async def list(self, query: ListQuery) -> Page:
        key = self._token_key
        below = decode_page_token(key, query.page_token, query) if query.page_token else None
        page_size = max(1, query.page_size)

        budget = PageBudget(query.max_bytes)

        records = await self._call(
            lambda conn: reads.records(conn, query, below, page_size + 1, budget), write=False
        )
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
            row = conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            record = to_record(row)
            if expected is not None and record.state not in expected:
                return None
            if lease_owner is not None and record.lease_owner != lease_owner:
                return None
            previous = record.state
            log_json, log_texts = row[7], row[14]
            if log is not None:  # the whole log patched, then stored split again (store/lean.py)
                doc = apply_log_patch(join_log(log_json, log_texts), log)
                log_json, log_texts = split_log(doc)
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
                    "UPDATE tasks SET state = ?, log_json = ?, log_text_json = ?, backend_json = ?, active = ?,"
                    " version = ?, finished_ms = COALESCE(finished_ms, ?) WHERE seq = ?",
                    (
                        record.state.value,
                        log_json,
                        log_texts,
                        json.dumps(record.backend),
                        int(record.active),
                        record.version,
                        now_ms if ended else None,
                        record.seq,
                    ),
                )
                if event:
                    outbox.insert_event(conn, record, now_ms)
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
            record = take_under_way(conn, worker_id, now_ms, until_ms)
            if record is not None:
                return record
            return take_fair(conn, worker_id, until_ms, rules)

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

        return await self._call(lambda conn: reads.quota_usage(conn, subject, issuer), write=False)

    async def count(self) -> int:
        return await self._call(reads.count, write=False)

    async def count_by_state(self) -> dict[TesState, int]:
        """Tasks per state (the /metrics gauge): one GROUP BY over the tasks_by_state index."""
        return await self._call(reads.count_by_state, write=False)

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
        return await self._call(
            lambda conn: outbox.claim_events(conn, worker_id, now_ms, until_ms, limit), write=True
        )

    async def finish_callback(self, worker_id: str, event: CallbackEvent) -> bool:
        return await self._call(lambda conn: outbox.finish_event(conn, worker_id, event), write=True)

    async def retry_callback(
        self, worker_id: str, event: CallbackEvent, next_attempt: datetime, error: str
    ) -> bool:
        next_ms = to_epoch_ms(next_attempt)
        return await self._call(
            lambda conn: outbox.retry_event(conn, worker_id, event, next_ms, error), write=True
        )

    async def pending_callbacks(self) -> int:
        return await self._call(outbox.pending_events, write=False)

    async def take_lease(self, name: str, worker_id: str, now: datetime, until: datetime) -> bool:
        now_ms, until_ms = to_epoch_ms(now), to_epoch_ms(until)
        return await self._call(
            lambda conn: outbox.take_lease(conn, name, worker_id, now_ms, until_ms), write=True
        )

    async def delete_finished(self, ended_before: datetime, limit: int) -> builtins.list[str]:
        cutoff = to_epoch_ms(ended_before)
        return await self._call(lambda conn: outbox.delete_finished(conn, cutoff, limit), write=True)
