"""Renders a stored task as the TES view a client asked for (MINIMAL, BASIC or FULL).

Only spec fields ever leave the service: the record's owner, lease and backend data stay inside,
and ``exclude_none`` keeps out every null the client did not send (py-tes 1.1.4 fails on unknown
fields, py-tes 0.4 on some nulls).

``logs`` holds the one attempt's TesTaskLog once there is something to say: the task has started,
ended, or the log has any content (a system_logs warning written at creation counts). A QUEUED task
that nothing has happened to yet has no ``logs``.

Credentials in URLs never leave through a view: inputs[].url, outputs[].url, logs[].outputs[].url
and every system_logs line are rendered through ``tes.masking`` (userinfo and signature/token
parameters become ``***``). The stored record keeps the originals, which the engine needs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tesp_api.tes.masking import mask_text, mask_url
from tesp_api.tes.models import READ_ONLY_FIELDS, TesTaskLog, TesView

if TYPE_CHECKING:
    from tesp_api.store.port import TaskRecord


# One encoder for every answer: json.dumps with options builds a new one per call (~1 us a task).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    """The one JSON encoding of a rendered view or answer, as Starlette's JSONResponse would encode
    it (compact, UTF-8), used by the routes and by the stores that build answers themselves; a lone
    surrogate (never accepted, see tes/limits.py) comes out as its escape rather than fail it."""
    return _ENCODER.encode(value).encode("utf-8", "backslashreplace")


def rfc3339(moment: datetime) -> str:
    """UTC time in RFC 3339 with a ``Z`` suffix (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def log_has_content(log: TesTaskLog) -> bool:
    return bool(log.start_time or log.end_time or log.logs or log.outputs or log.system_logs or log.metadata)


def _full(record: TaskRecord) -> dict[str, Any]:
    submitted = record.task.model_dump(mode="json", exclude_none=True, exclude=set(READ_ONLY_FIELDS))
    body: dict[str, Any] = {"id": record.id, "state": record.state.value, **submitted}
    body["creation_time"] = rfc3339(record.created_at)
    if log_has_content(record.log):
        body["logs"] = [record.log.model_dump(mode="json", exclude_none=True)]
    return body


def _mask_secrets(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON body with every URL credential masked (see the module doc)."""
    for item in [*body.get("inputs", []), *body.get("outputs", [])]:
        if isinstance(item.get("url"), str):
            item["url"] = mask_url(item["url"])
    if isinstance(body.get("callback_url"), str):
        body["callback_url"] = mask_url(body["callback_url"])
    for task_log in body.get("logs", []):
        for output in task_log.get("outputs", []):
            if isinstance(output.get("url"), str):
                output["url"] = mask_url(output["url"])
        if task_log.get("system_logs"):
            task_log["system_logs"] = [mask_text(line) for line in task_log["system_logs"]]
    return body


def _strip_for_basic(body: dict[str, Any]) -> dict[str, Any]:
    for inp in body.get("inputs", []):
        inp.pop("content", None)
    for task_log in body.get("logs", []):
        task_log.pop("system_logs", None)
        for executor_log in task_log.get("logs", []):
            executor_log.pop("stdout", None)
            executor_log.pop("stderr", None)
    return body


def basic_from_full(body: dict[str, Any]) -> dict[str, Any]:
    """The BASIC view of a task's unmasked FULL JSON object (the store's lean BASIC reads build
    that object from the stored JSON without the models: tesp_api/store/lean.py)."""
    return _strip_for_basic(_mask_secrets(body))


def render_task(record: TaskRecord, view: TesView = TesView.MINIMAL) -> dict[str, Any]:
    """The JSON object of ``record`` in ``view``."""
    if view == TesView.MINIMAL:
        return {"id": record.id, "state": record.state.value}
    if view == TesView.BASIC:
        return basic_from_full(_full(record))
    return _mask_secrets(_full(record))
