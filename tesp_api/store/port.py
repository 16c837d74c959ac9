"""The task store port: what the API and the engine need from a database, and nothing more.

Two adapters implement it (``sqlite/``, the embedded default, and ``mongo.py``) and both pass the
one contract suite in tests/store/. Design rules every adapter keeps:

* A task is one record: the submitted ``TesTask`` (as JSON), its ``state``, its ``owner``, the
  current attempt's ``TesTaskLog`` and the engine's bookkeeping (lease, backend data).
* Every state change is a compare-and-set: ``expected`` states -> new state, applied atomically
  together with the log patch. A lost race returns ``None``; nobody overwrites anybody.
* Logs are appended (system log lines, output file logs) or set once per executor index; a patch
  never removes what an earlier patch wrote.
* Listing is keyset-paged on (creation sequence), newest first, with an opaque cursor, so a page
  deep in the list costs the same as the first and stays right while tasks are being created.
* ``active`` is true from creation until the engine has finished with the task (final state
  reached *and* backend resources released). Only active tasks whose lease is free or expired can
  be claimed, so a crashed worker's tasks are picked up again and nothing runs twice concurrently.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from tesp_api.tes.models import TesExecutorLog, TesOutputFileLog, TesState, TesTask, TesTaskLog


@dataclass(frozen=True, slots=True)
class Owner:
    """Who submitted a task: the authenticated subject and the issuer that vouched for it."""

    subject: str
    issuer: str = ""


@dataclass(slots=True)
class TaskRecord:
    id: str
    state: TesState
    task: TesTask  # as submitted; id, state, creation_time and logs are filled in when rendered
    owner: Owner | None
    created_at: datetime  # timezone-aware UTC; creation_time is rendered from it (RFC 3339)
    seq: int  # strictly increasing creation sequence number: the list order and keyset cursor
    log: TesTaskLog = field(default_factory=TesTaskLog)  # the current (only) attempt
    active: bool = True
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    backend: dict[str, Any] = field(default_factory=dict)  # engine-private (Pulsar server, job id...)
    version: int = 0  # bumped by every update


@dataclass(slots=True)
class LogPatch:
    """What one update adds to the current attempt's ``TesTaskLog``. ``None``/empty leaves a field alone."""

    start_time: str | None = None
    end_time: str | None = None
    system_logs: list[str] = field(default_factory=list)  # appended
    executor_logs: dict[int, TesExecutorLog] = field(default_factory=dict)  # set at that index
    outputs: list[TesOutputFileLog] = field(default_factory=list)  # appended
    metadata: dict[str, str] = field(default_factory=dict)  # merged


@dataclass(slots=True)
class ListQuery:
    page_size: int = 256
    page_token: str | None = None  # opaque, produced by the store
    name_prefix: str | None = None  # a plain prefix, never a pattern
    state: TesState | None = None
    tags: list[tuple[str, str | None]] = field(default_factory=list)  # (key, value; None/"" = any value)
    owner: Owner | None = None  # None = every owner (admin, or auth off)
    # Stop early once the tasks read add up to this many bytes of stored JSON (task + log), keeping at
    # least one: a page of big tasks is then shorter, with a next_page_token. None = no byte limit.
    max_bytes: int | None = None


@dataclass(slots=True)
class Page:
    records: list[TaskRecord]
    next_page_token: str | None


@dataclass(slots=True, frozen=True)
class TaskSummary:
    """What the MINIMAL view shows, read from columns (SQLite) or a projection (MongoDB): the task's
    JSON is never read nor decoded for it (issue 15)."""

    id: str
    state: TesState
    seq: int
    owner: Owner | None = None


@dataclass(slots=True)
class SummaryPage:
    summaries: list[TaskSummary]
    next_page_token: str | None


@runtime_checkable
class LeanReads(Protocol):
    """Optional store methods for the MINIMAL view; the API falls back to get/list without them.
    Same filters, owner scoping, order and page tokens as ``get``/``list``."""

    async def get_summary(self, task_id: str, owner: Owner | None = None) -> TaskSummary | None: ...

    async def list_summaries(self, query: ListQuery) -> SummaryPage: ...


@runtime_checkable
class BasicReads(Protocol):
    """Optional store methods for the BASIC view, answered as JSON from the light texts alone
    (store/lean.py: no input content, stdout/stderr or system logs read; issue 15). The API falls
    back to get/list and render_task without them. Same filters, owner scoping, order, page tokens
    and byte budget as ``get``/``list``; the JSON equals render_task(record, BASIC)."""

    async def get_basic_json(self, task_id: str, owner: Owner | None = None) -> bytes | None: ...

    async def list_basic_json(self, query: ListQuery) -> bytes: ...


class StoreError(Exception):
    """Base class for store failures the API turns into TES-shaped errors."""


class InvalidPageToken(StoreError):
    pass


class DuplicateTask(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The store cannot serve any more until restarted: its writer died, or the database file was
    deleted or replaced under the running server. Every call fails fast with this (the API: 503)."""


class CorruptRecord(StoreError):
    """A stored task that no longer decodes (a model change, a hand edit). ``claim`` never returns
    such a record: it takes it out of the queue (SYSTEM_ERROR, a system log line) and goes on."""

    def __init__(self, task_id: str, problem: str) -> None:
        super().__init__(f"stored task {task_id} cannot be read: {problem}")
        self.task_id = task_id
        self.problem = problem


class IdempotencyConflict(StoreError):
    """An Idempotency-Key already used by this owner for a different request body (the API: 409)."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An ``Idempotency-Key`` of a create, scoped to the owner: a create with a key the owner used
    before (and that has not expired) returns that first task instead of making a second one, if
    ``fingerprint`` (a hash of the request body) is the same, and raises IdempotencyConflict if not.
    The key is stored in the same transaction as the task (one insert in MongoDB)."""

    key: str
    fingerprint: str
    expires_at: datetime  # when the key may be used again for another task


@dataclass(slots=True)
class CallbackEvent:
    """One undelivered status callback of the outbox (docs/callbacks.md).

    Written by ``create`` (QUEUED) and by every ``update`` that changes the state of a task with a
    ``callback_url``, in the same transaction as that change, so a crash can never lose one. Only
    the oldest undelivered event of a task can be claimed: events reach the receiver in state order.
    """

    id: str  # the webhook-id: stable across retries, so a receiver can drop duplicates
    task_id: str
    seq: int  # order within the task (increasing)
    state: TesState
    url: str
    payload: str  # the task's BASIC view at that change, as JSON text (what is POSTed, byte for byte)
    attempts: int = 0  # deliveries tried so far
    created_at: datetime | None = None


# Routing callback of a claim: given a waiting task and the store's count of active tasks per
# server (all workers), the servers that may take it, best first; empty: none can now.
RouteFn = Callable[[TaskRecord, Mapping[str, int]], Sequence[str]]


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """What a claim of a QUEUED task must respect (docs/quotas.md). The store decides atomically
    (SQLite: inside the writer's transaction; MongoDB: conditional updates of counter documents),
    so the limits hold over every worker and replica. Limits of 0 mean no limit."""

    max_active_per_owner: int = 0  # tasks holding a slot (claimed from QUEUED, INITIALIZING, RUNNING)
    owner_overrides: Mapping[str, int] = field(default_factory=dict)  # by Owner.subject
    server_limits: Mapping[str, int] = field(default_factory=dict)  # server name -> max_active
    route: RouteFn | None = None  # None: the store assigns no server (the engine chooses)

    def owner_limit(self, subject: str | None) -> int:
        if subject is not None and subject in self.owner_overrides:
            return self.owner_overrides[subject]
        return self.max_active_per_owner


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """Counts the store keeps for fair claiming (all workers): one owner's tasks holding a slot and
    waiting, and the tasks holding a slot per Pulsar server."""

    owner_active: int = 0
    owner_queued: int = 0
    servers: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class TaskStore(Protocol):
    async def open(self) -> None:
        """Connect and create tables/indexes. Idempotent."""

    async def close(self) -> None: ...

    async def create(
        self, task: TesTask, owner: Owner | None, *, idempotency: IdempotencyKey | None = None
    ) -> TaskRecord:
        """Persist a new task. The caller has set ``task.id``; the store sets state QUEUED,
        created_at and seq, and returns the stored record. Raises DuplicateTask on an id clash.
        With ``idempotency`` whose key this owner used before for the same fingerprint, nothing is
        written and the first task's record is returned (its ``id`` is not ``task.id``: that is how
        the caller tells a replay); for another fingerprint, raises IdempotencyConflict."""

    async def get(self, task_id: str, owner: Owner | None = None) -> TaskRecord | None:
        """The task, or None when it does not exist or ``owner`` is given and does not match."""

    async def list(self, query: ListQuery) -> Page: ...

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
        """Atomically apply a change. With ``expected``, only if the current state is in it; with
        ``lease_owner``, only if that worker holds the lease. ``backend`` keys are merged into the
        record's backend dict. Returns the updated record, or None when the task is missing or a
        condition failed (nothing is written then)."""

    async def claim(
        self, worker_id: str, now: datetime, lease_until: datetime, *, policy: ClaimPolicy | None = None
    ) -> TaskRecord | None:
        """Atomically take the lease on an active task whose lease is free or expired
        (lease_expires is None or <= now). None when there is nothing to claim.

        Tasks already under way (past QUEUED, final but not cleaned up, or claimed before) come
        first, without limits. Then a QUEUED task, fairly: round robin over the owners with waiting
        tasks (the owner served longest ago first, an owner's tasks oldest first), skipping owners
        at their limit and tasks no server can take (``policy``). Claiming a QUEUED task takes a
        slot for its owner and its server; the slot is given back when the task leaves QUEUED,
        INITIALIZING and RUNNING for a final state or becomes inactive (``update`` sees it)."""

    async def quota_usage(self, owner: Owner | None) -> QuotaUsage:
        """The fair-claim counts for ``owner`` (and every server): the GET view and /admin/servers."""

    async def renew(
        self, worker_id: str, task_ids: builtins.list[str], lease_until: datetime
    ) -> builtins.list[str]:
        """Extend this worker's leases; returns the ids whose lease it still held."""

    async def release(self, worker_id: str, task_id: str) -> None:
        """Give a lease back (on shutdown) so another worker may claim the task at once."""

    async def count(self) -> int: ...

    async def count_by_state(self) -> dict[TesState, int]:
        """How many tasks are in each state (states without tasks may be missing): /metrics."""

    async def get_or_create_secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the store under ``name``, made on first use. Every
        replica sharing the store gets the same bytes (two creating it at once agree on one), so a
        key that signs URLs (the AMQP staging server's) is verified by whichever replica a load
        balancer picks."""

    # -- the callback outbox and retention (docs/callbacks.md) --------------------------------

    def record_callbacks_for(self, states: frozenset[TesState] | None) -> None:
        """Which state changes write an outbox event (tasks with a callback_url only). None: every
        state (the default); an empty set: none. Set once by the composition root from settings."""

    async def claim_callbacks(
        self, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[CallbackEvent]:
        """Lease up to ``limit`` due events, each the oldest undelivered one of its task, whose lease
        is free or expired: any replica may deliver, never two at once, never out of order."""

    async def finish_callback(self, worker_id: str, event: CallbackEvent) -> bool:
        """Remove a delivered (or given up) event; False when this worker no longer held its lease."""

    async def retry_callback(
        self, worker_id: str, event: CallbackEvent, next_attempt: datetime, error: str
    ) -> bool:
        """Count a failed attempt, free the lease and make the event due again at ``next_attempt``."""

    async def pending_callbacks(self) -> int:
        """Undelivered events (metrics, tests)."""

    async def take_lease(self, name: str, worker_id: str, now: datetime, until: datetime) -> bool:
        """A named store-wide lease (the retention sweep's): True when ``worker_id`` holds it now
        (it was free, expired, or already its own); one holder at a time across replicas."""

    async def delete_finished(self, ended_before: datetime, limit: int) -> builtins.list[str]:
        """Delete at most ``limit`` tasks that ended (final state, engine done) before ``ended_before``
        and have no undelivered callback; returns their ids (the caller removes their scratch)."""
