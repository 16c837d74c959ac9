"""Pieces both store adapters share: how a task's log is kept and patched, times, owners.

The current attempt's log is stored as ``{"log": <TesTaskLog without executor logs>,
"executors": {"<index>": <TesExecutorLog>}}``: executor logs are keyed by executor index so that
"set the log of executor i" is exact even if logs arrive out of order, and rendering lists them
in index order. Both adapters read-modify-write this document inside their compare-and-set, so
the patch rules live here once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tesp_api.store.port import LogPatch, Owner, TaskRecord
from tesp_api.tes import states
from tesp_api.tes.models import TesExecutorLog, TesState, TesTask, TesTaskLog, TesView

# What decoding a stored row can raise when the row is not what this version writes.
DECODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


def utc_now() -> datetime:
    """Now, truncated to milliseconds: the precision MongoDB keeps, so both stores agree."""
    return truncate_ms(datetime.now(UTC))


def truncate_ms(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def to_epoch_ms(moment: datetime) -> int:
    moment = truncate_ms(moment)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def from_epoch_ms(value: int) -> datetime:
    seconds, millis = divmod(value, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)


def new_log_doc() -> dict[str, Any]:
    return {"log": {}, "executors": {}}


def apply_log_patch(doc: dict[str, Any], patch: LogPatch) -> dict[str, Any]:
    """A new log document with ``patch`` applied (appends, per-index sets, metadata merge)."""
    log = dict(doc.get("log") or {})
    executors = dict(doc.get("executors") or {})
    if patch.start_time is not None:
        log["start_time"] = patch.start_time
    if patch.end_time is not None:
        log["end_time"] = patch.end_time
    if patch.system_logs:
        log["system_logs"] = [*(log.get("system_logs") or []), *patch.system_logs]
    if patch.outputs:
        log["outputs"] = [
            *(log.get("outputs") or []),
            *(o.model_dump(mode="json", exclude_none=True) for o in patch.outputs),
        ]
    if patch.metadata:
        log["metadata"] = {**(log.get("metadata") or {}), **patch.metadata}
    for index, executor_log in patch.executor_logs.items():
        executors[str(int(index))] = executor_log.model_dump(mode="json", exclude_none=True)
    return {"log": log, "executors": executors}


def log_from_doc(doc: dict[str, Any] | None) -> TesTaskLog:
    if not doc or (not doc.get("log") and not doc.get("executors")):
        return TesTaskLog()  # the common case of a queued task: skip validation
    executors = doc.get("executors") or {}
    logs = [TesExecutorLog.model_validate(executors[k]) for k in sorted(executors, key=int)]
    return TesTaskLog.model_validate({**(doc.get("log") or {}), "logs": logs})


def owner_matches(stored: Owner | None, wanted: Owner | None) -> bool:
    """``wanted`` None means "anyone" (admin, or auth off)."""
    return wanted is None or stored == wanted


def decode_problem(exc: BaseException) -> str:
    """Why a stored row does not decode, naming fields but never their values (a task's env or
    inputs may hold secrets, and this text goes to the log and the task's system_logs)."""
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or '(task)'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)[:5]
        ]
        return f"{exc.title} does not validate ({'; '.join(parts)})"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at position {exc.pos}"
    return type(exc).__name__


def quarantine_change(state: str, log_json: str | None, problem: str) -> tuple[str, str]:
    """The (state, log JSON) of a row taken out of the queue because it does not decode: a final
    state is kept (it must never change), any other becomes SYSTEM_ERROR; one system log line says
    why. A log that does not decode either is started afresh."""
    line = f"tesp-api cannot read this stored task any more and stopped handling it: {problem}"
    try:
        doc = json.loads(log_json or "{}")
        if not isinstance(doc, dict):
            raise TypeError("log is not an object")
        doc = apply_log_patch(
            doc, LogPatch(end_time=utc_now().isoformat().replace("+00:00", "Z"), system_logs=[line])
        )
    except DECODE_ERRORS:
        doc = apply_log_patch(new_log_doc(), LogPatch(system_logs=[line]))
    try:
        final = states.is_final(TesState(state))
    except ValueError:
        final = False
    return (state if final else TesState.SYSTEM_ERROR.value), json.dumps(doc)


def owner_key(owner: Owner | None) -> str:
    """The owner as one string (idempotency keys are scoped by it); "" when auth is off."""
    return "" if owner is None else json.dumps([owner.subject, owner.issuer], separators=(",", ":"))


def body_fingerprint(body: Any) -> str:
    """A hash of a JSON request body, independent of whitespace and key order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


# -- the callback outbox (docs/callbacks.md) ---------------------------------------------------


def callback_due(task: TesTask, state: TesState, wanted: frozenset[TesState] | None) -> bool:
    """Whether a change of ``task`` to ``state`` writes an outbox event (None: every state)."""
    return bool(task.callback_url) and (wanted is None or state in wanted)


def new_event_id() -> str:
    """A webhook-id (Standard Webhooks: unique per message, the same on every retry of it)."""
    return f"msg_{secrets.token_hex(16)}"


def callback_payload(record: TaskRecord) -> str:
    """What a callback POSTs: the task's BASIC view at this change, as compact JSON. Rendered
    when the change is written, so every event says what the task was then, whenever it is sent."""
    from tesp_api.tes.views import render_task  # tes only; late to keep this module light

    try:
        body = render_task(record, TesView.BASIC)
    except DECODE_ERRORS:  # never let a rendering problem fail the state change itself
        body = {"id": record.id, "state": record.state.value}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
