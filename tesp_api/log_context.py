"""Which task a log line is about: task id, worker id and Pulsar server, carried by a contextvar.

The engine's task driver binds the fields for the time it drives one task (``TaskDriver.run``).
A contextvar, not a logger adapter, because most lines about a task are written by code that
knows nothing about tasks (the Pulsar clients, transfers, httpx): asyncio copies the context
into every task created inside and ``asyncio.to_thread`` into its thread, so their lines carry the
fields too, while the API's request handlers, which run in other contexts, never see them.

:class:`LogContextFilter` (on the handler that ``configure_logging`` installs) copies the fields
onto every record as ``task_id``, ``worker_id`` and ``pulsar_server`` (None when not bound); the
formatters show them: text as ``[task=<id> worker=<w> server=<s>]`` before the message, only the
ones that are set; JSON as separate keys. See docs/logging.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# record attribute / JSON key -> short name in text lines
FIELDS: Mapping[str, str] = MappingProxyType(
    {"task_id": "task", "worker_id": "worker", "pulsar_server": "server"}
)

_EMPTY: Mapping[str, str] = MappingProxyType({})
_current: ContextVar[Mapping[str, str]] = ContextVar("tesp_api_log_context", default=_EMPTY)


def current() -> Mapping[str, str]:
    """The fields bound in this context (empty outside a task)."""
    return _current.get()


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add fields (``task_id``, ``worker_id``, ``pulsar_server``; None values are skipped) to this
    context; :func:`reset` with the token undoes it."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    merged = {**_current.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    return _current.set(MappingProxyType(merged))


def reset(token: Token[Mapping[str, str]]) -> None:
    _current.reset(token)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """The fields bound for the ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


@contextmanager
def cleared() -> Iterator[None]:
    """No fields for the ``with`` block: for starting long-lived work (a consumer, a server, a
    sweeper) lazily from inside a task's driver, whose asyncio tasks would otherwise copy that
    task's context and name it on every line for as long as they live."""
    token = _current.set(_EMPTY)
    try:
        yield
    finally:
        _current.reset(token)


class LogContextFilter(logging.Filter):
    """Copies the bound fields onto each record (None when unbound); a field the caller passed in
    ``extra=`` wins. Never drops a record. On a handler, so it sees every logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _current.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name))
        return True


def context_prefix(record: logging.LogRecord) -> str:
    """``[task=<id> worker=<w> server=<s>] `` with only the fields that are set, or ""."""
    parts = [f"{short}={value}" for name, short in FIELDS.items() if (value := getattr(record, name, None))]
    return f"[{' '.join(parts)}] " if parts else ""


class TextLogFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: [task=... worker=... server=...] <message>``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(log_context)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.log_context = context_prefix(record)
        return super().format(record)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (``logging.output_json = true``); the context
    fields are keys of their own, present only when set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
