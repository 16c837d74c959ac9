"""The heavy parts of a stored task, kept apart so that the BASIC view reads only what it returns.

BASIC is FULL minus inputs' ``content``, executor logs' ``stdout``/``stderr`` and ``system_logs``
(TES 1.1, tesp_api/tes/views.py), and those are exactly what can be large: an input's content
(up to the per-task limit), output tails, many system log lines. Both adapters therefore store
each task as four JSON texts (issue 15, docs/store.md "Lean BASIC reads"):

- the *light task*: the submitted task without any input's ``content``;
- the *contents*: ``[content or null, ...]`` aligned with ``inputs``, or none when no input has one;
- the *light log*: the log document (records.py) without ``system_logs`` and without each executor
  log's ``stdout``/``stderr``; ``"system_log_lines": n`` says how many system log lines there are,
  because a log with only system lines still renders as a (then empty) ``logs`` entry in BASIC;
- the *log texts*: ``{"system_logs": [...], "executors": {"<i>": {"stdout": .., "stderr": ..}}}``,
  or none when there are none.

A FULL read joins them back (join_task, join_log); a BASIC read decodes only the light texts with
``json.loads`` (no pydantic model) and renders them (basic_body). A task stored before the split
has its whole task and log in the light texts and no heavy ones: joining is then a no-op and
basic_body still strips what BASIC leaves out, so old rows read correctly in every view.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tesp_api.store.records import DECODE_ERRORS, quarantine_change
from tesp_api.tes.models import READ_ONLY_FIELDS, TesTask
from tesp_api.tes.views import basic_from_full, rfc3339

_SYSTEM_LOG_LINES = "system_log_lines"
_EXECUTOR_TEXTS = ("stdout", "stderr")
# The order TesTaskLog.model_dump gives its fields (logs and outputs always, the rest when set).
_LOG_FIELDS = ("metadata", "start_time", "end_time")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def split_task(task: TesTask) -> tuple[str, str | None]:
    """(light task JSON, contents JSON or None) of a task about to be stored."""
    inputs = task.inputs or []
    if all(i.content is None for i in inputs):
        return task.model_dump_json(exclude_none=True), None
    light = task.model_dump_json(exclude_none=True, exclude={"inputs": {"__all__": {"content"}}})
    return light, _compact([i.content for i in inputs])


def split_task_json(task_json: str) -> tuple[str, str | None]:
    """As split_task, for a task stored whole (a file written before the split): JSON in, JSON out."""
    doc = json.loads(task_json)
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not any(isinstance(i, dict) and "content" in i for i in inputs):
        return task_json, None
    contents = [i.pop("content", None) if isinstance(i, dict) else None for i in inputs]
    return _compact(doc), _compact(contents)


def join_task(light: str, contents: str | None) -> TesTask:
    """The submitted task from its stored parts (ValueError and friends when they do not decode)."""
    task = TesTask.model_validate_json(light)
    if contents is None:
        return task
    # Set on the validated inputs, not validated again as a dict: the light text parses as fast
    # as the whole did, and a content is only ever a string (what validation would check).
    for item, content in zip(task.inputs or [], json.loads(contents), strict=True):
        if content is not None:
            if not isinstance(content, str):
                raise TypeError("an input's stored content is not a string")
            item.content = content
    return task


def split_log(doc: dict[str, Any]) -> tuple[str, str | None]:
    """(light log JSON, log texts JSON or None) of a log document (records.py)."""
    log = dict(doc.get("log") or {})
    system_logs = log.pop("system_logs", None)
    executors: dict[str, Any] = {}
    texts: dict[str, Any] = {}
    for index, executor_log in (doc.get("executors") or {}).items():
        kept = dict(executor_log)
        heavy = {name: kept.pop(name) for name in _EXECUTOR_TEXTS if name in kept}
        executors[index] = kept
        if heavy:
            texts[index] = heavy
    light: dict[str, Any] = {"log": log, "executors": executors}
    heavy_doc: dict[str, Any] = {}
    if system_logs:
        light[_SYSTEM_LOG_LINES] = len(system_logs)
        heavy_doc["system_logs"] = system_logs
    if texts:
        heavy_doc["executors"] = texts
    return json.dumps(light), (json.dumps(heavy_doc) if heavy_doc else None)


def join_log(light: str, texts: str | None) -> dict[str, Any]:
    """The log document from its stored parts (ValueError and friends when they do not decode)."""
    doc: dict[str, Any] = json.loads(light)
    doc.pop(_SYSTEM_LOG_LINES, None)
    if texts is None:
        return doc
    heavy = json.loads(texts)
    if heavy.get("system_logs"):
        doc.setdefault("log", {})["system_logs"] = heavy["system_logs"]
    executors = doc.setdefault("executors", {})
    for index, parts in (heavy.get("executors") or {}).items():
        executors[index] = {**executors.get(index, {}), **parts}
    return doc


def split_log_json(log_json: str) -> tuple[str, str | None]:
    """As split_log, for a log stored whole (a file written before the split)."""
    return split_log(json.loads(log_json))


def quarantine_texts(
    state: str, light_log: str | None, texts: str | None, problem: str
) -> tuple[str, str, str | None]:
    """records.quarantine_change for a split log: (state, light log JSON, log texts JSON). The
    whole log gets the line, unless its parts do not decode: then the log starts afresh."""
    try:
        whole: str | None = json.dumps(join_log(light_log or "{}", texts))
    except DECODE_ERRORS:
        whole = light_log
    state, log_json = quarantine_change(state, whole, problem)
    return (state, *split_log_json(log_json))


def basic_body(
    task_id: str, state: str, created_at: datetime, light_task: str, light_log: str
) -> dict[str, Any]:
    """The BASIC view of a task from its light texts alone: what ``render_task(record, BASIC)``
    gives for the whole record (tests/store/test_lean_basic.py holds them equal), without
    building the pydantic models. ValueError and friends when the texts do not decode."""
    task = json.loads(light_task)
    body: dict[str, Any] = {"id": task_id, "state": state}
    body.update((k, v) for k, v in task.items() if k not in READ_ONLY_FIELDS)
    body["creation_time"] = rfc3339(created_at)
    doc = json.loads(light_log)
    log = doc.get("log") or {}
    executors = doc.get("executors") or {}
    entry: dict[str, Any] = {"logs": [executors[k] for k in sorted(executors, key=int)]}
    entry.update((name, log[name]) for name in _LOG_FIELDS if log.get(name) is not None)
    entry["outputs"] = log.get("outputs") or []
    system_lines = doc.get(_SYSTEM_LOG_LINES) or log.get("system_logs")  # (a log stored whole)
    if entry["logs"] or entry["outputs"] or system_lines or any(log.get(n) for n in _LOG_FIELDS):
        body["logs"] = [entry]
    return basic_from_full(body)
