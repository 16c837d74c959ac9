"""Pieces both store adapters share: how a task's log is kept and patched, times, owners.

The current attempt's log is stored as ``{"log": <TesTaskLog without executor logs>,
"executors": {"<index>": <TesExecutorLog>}}``: executor logs are keyed by executor index so that
"set the log of executor i" is exact even if logs arrive out of order, and rendering lists them
in index order. Both adapters read-modify-write this document inside their compare-and-set, so
the patch rules live here once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tesp_api.store.port import LogPatch, Owner
from tesp_api.tes.models import TesExecutorLog, TesTaskLog


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
