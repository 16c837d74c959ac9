"""Prometheus metrics of this process (docs/metrics.md). No FastAPI here: the engine, the Pulsar
clients and the transfer code count into these; ``tesp_api/api/metrics.py`` serves them at /metrics.

Counters and histograms live in prometheus-client's process-wide registry (one set per process,
whatever the number of apps a test builds). The ``tesp_tasks{state}`` gauge is not kept here: it is
read from the task store at every scrape (one indexed GROUP BY), so it is right whichever process
changed the tasks.

Task counts (created, finished, duration) come from :class:`InstrumentedStore`, a thin wrapper that
the composition root (tesp_api/service.py) puts around the store: a task is counted by the process
that made the change, so with separate ``tesp-api worker`` processes the finished counts of their
tasks are not in the API's /metrics (the gauge is).

``tesp-api serve`` with ``api.workers >= 1`` (tesp_api/workers.py) runs prometheus-client's
multiprocess mode: before forking, the parent calls :func:`use_multiprocess_dir` with a private
directory, every process then writes its values to its own files there, and whichever API process
a scrape reaches answers the sum over all of them, the engine process included
(:func:`multiprocess_registry`). Why and how each metric is merged: docs/metrics.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from tesp_api.tes import states
from tesp_api.tes.models import TesState

TASKS_CREATED = Counter("tesp_tasks_created", "Tasks accepted by POST /tasks in this process")
TASKS_FINISHED = Counter(
    "tesp_tasks_finished", "Tasks this process moved to a final state, by that state", ["state"]
)
TASK_DURATION = Histogram(
    "tesp_task_duration_seconds",
    "From creation to the final state, of the tasks this process finished",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, float("inf")),
)
PULSAR_REQUESTS = Counter(
    "tesp_pulsar_requests",
    "HTTP requests to Pulsar servers, by server and outcome (ok, client_error, server_error, error)",
    ["server", "outcome"],
)
PULSAR_REQUEST_SECONDS = Histogram(
    "tesp_pulsar_request_seconds", "Duration of one HTTP request to a Pulsar server", ["server"]
)
TRANSFER_BYTES = Counter(
    "tesp_transfer_bytes",
    "Bytes staged by tesp-api itself, by URL scheme and direction (download = input, upload = output)",
    ["scheme", "direction"],
)
AMQP_MESSAGES = Counter(
    "tesp_amqp_messages",
    "AMQP messages to and from Pulsar, by direction (out, in) and kind (setup, kill, status, status_update)",
    ["direction", "kind"],
)

CALLBACK_ATTEMPTS = Counter(
    "tesp_callback_attempts",
    "Status callback POSTs made by this process, by outcome (ok, failed)",
    ["outcome"],
)
CALLBACKS_DROPPED = Counter(
    "tesp_callbacks_dropped", "Status callbacks given up after callbacks.max_attempts (or no longer allowed)"
)
TASKS_DELETED = Counter(
    "tesp_tasks_deleted", "Finished tasks deleted by the retention sweep of this process (retention.*)"
)
# livesum: each live child adds 1 for its role; the parent removes a dead child's file
# (process_ended), so the sum is the processes alive now. Set only with api.workers >= 1.
SERVE_PROCESSES = Gauge(
    "tesp_serve_processes",
    "Live child processes of 'tesp-api serve' with api.workers >= 1, by role (api, engine)",
    ["role"],
    multiprocess_mode="livesum",
)

# Every metric of this module (all are defined above): the ones use_multiprocess_dir moves to files.
_ALL: tuple[MetricWrapperBase, ...] = tuple(
    m for m in list(globals().values()) if isinstance(m, MetricWrapperBase)
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_multiprocess_dir: str | None = None


def use_multiprocess_dir(directory: str) -> None:
    """Switch this process (and the children it forks afterwards) to prometheus-client's
    multiprocess mode, writing to ``directory`` (private, empty, removed by the caller at the end).

    prometheus-client picks its value class from PROMETHEUS_MULTIPROC_DIR when it is first
    imported, which for ``tesp-api serve`` happened long before the settings said api.workers >= 1.
    So the variable is set here (for anything that reads it later), the value class is switched,
    and this module's metrics, created at import with in-memory values, get file-backed ones. They
    hold nothing yet: the parent counts nothing before it forks."""
    global _multiprocess_dir
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for metric in _ALL:
        if metric._labelnames:  # a parent of labelled children: they are made again on .labels()
            with metric._lock:
                metric._metrics.clear()
        else:
            metric._metric_init()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory


def multiprocess_registry() -> CollectorRegistry | None:
    """In multiprocess mode, a registry whose collection sums the files of every process, the
    dead ones' counters included (counters never go down); None in one process."""
    if _multiprocess_dir is None:
        return None
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=_multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry


def process_started(role: str) -> None:
    """A child of ``tesp-api serve`` (api.workers >= 1) counts itself in ``tesp_serve_processes``."""
    SERVE_PROCESSES.labels(role).set(1)


def process_ended(pid: int) -> None:
    """The parent's bookkeeping for a child that exited: its live gauges leave the sum."""
    if _multiprocess_dir is not None:
        mark_process_dead(pid, _multiprocess_dir)  # type: ignore[no-untyped-call]


@dataclass
class _Seen:
    status: int | None = None


@dataclass(frozen=True)
class LastContact:
    """The outcome of this process's latest request to one Pulsar server (the dashboard's health)."""

    outcome: str  # ok, client_error, server_error, error
    at: float  # time.time()


LAST_CONTACT: dict[str, LastContact] = {}


@contextmanager
def pulsar_request(server: str) -> Iterator[_Seen]:
    """Time one Pulsar HTTP request and count its outcome; the caller sets ``.status``."""
    seen = _Seen()
    started = time.monotonic()
    outcome = "error"  # no answer: connection refused, timeout...
    try:
        yield seen
        if seen.status is not None:
            outcome = "ok" if seen.status < 400 else "client_error" if seen.status < 500 else "server_error"
    finally:
        PULSAR_REQUEST_SECONDS.labels(server).observe(time.monotonic() - started)
        PULSAR_REQUESTS.labels(server, outcome).inc()
        LAST_CONTACT[server] = LastContact(outcome, time.time())


def count_transfer(url: str, direction: str, size: int) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else "file"
    TRANSFER_BYTES.labels(scheme, direction).inc(max(size, 0))


def _finished(record: Any, state: TesState) -> None:
    TASKS_FINISHED.labels(state.value).inc()
    created = getattr(record, "created_at", None)
    if isinstance(created, datetime):
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        TASK_DURATION.observe(max((datetime.now(UTC) - created).total_seconds(), 0.0))


class InstrumentedStore:
    """The task store, counting creates and moves to a final state; everything else passes through.

    ``update`` returns None when its compare-and-set did not apply, so a task is counted once, by
    the call that really finished it."""

    def __init__(self, store: Any) -> None:
        self._store = store

    @property
    def wrapped(self) -> Any:
        return self._store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        record = await self._store.create(*args, **kwargs)
        if not getattr(record, "replayed", False):  # an idempotent replay created nothing
            TASKS_CREATED.inc()
        return record

    async def update(self, task_id: str, *args: Any, **kwargs: Any) -> Any:
        state = kwargs.get("state")
        record = await self._store.update(task_id, *args, **kwargs)
        if record is not None and isinstance(state, TesState) and states.is_final(state):
            _finished(record, state)
        return record


def instrument(store: Any) -> Any:
    """``store`` wrapped by :class:`InstrumentedStore` (once)."""
    return store if isinstance(store, InstrumentedStore) else InstrumentedStore(store)
