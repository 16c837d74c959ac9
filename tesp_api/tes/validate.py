"""Checks a submitted task before it is stored, so that a task the service could never run is refused
at once with a 400 naming the offending field, instead of failing later as a SYSTEM_ERROR.

Pure domain code: it imports only pydantic and the TES models. What depends on the deployment (size
limits, supported backend_parameters keys, which URLs are acceptable) is passed in by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tesp_api.tes.models import TesFileType, TesTask

# POSIX pattern-matching characters (IEEE Std 1003.1-2017, 2.13): the only wildcards TES allows.
_WILDCARD = re.compile(r"[*?\[]")
# Fields the server sets; a client that sends them (e.g. resubmitting a fetched task) is not at fault.
READ_ONLY_FIELDS = ("id", "state", "logs", "creation_time")
# A URL checker gets the URL and the declared file type (FILE, DIRECTORY or None) and returns None
# when the URL is acceptable, otherwise a short reason fit for the client.
UrlCheck = Callable[[str, "TesFileType | None"], "str | None"]


class TaskValidationError(ValueError):
    """The task cannot be accepted; ``str(exc)`` names the field and the reason."""


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_content_bytes: int = 1024 * 1024
    supported_backend_parameters: tuple[str, ...] = ()
    reject_unknown_fields: bool = True


@dataclass(slots=True)
class ValidatedTask:
    task: TesTask
    # system_logs lines to record at creation (e.g. dropped backend_parameters keys)
    warnings: list[str] = field(default_factory=list)


def has_wildcard(path: str) -> bool:
    return bool(_WILDCARD.search(path))


def field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = field_path(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (not part of TES 1.1)"
    if err["type"] == "missing":
        return f"{where}: field required"
    return f"{where}: {err['msg']}"


def _strip_unknown(raw: dict[str, Any], exc: ValidationError) -> bool:
    """Remove the unknown fields ``exc`` reports from ``raw``; False when it reports other errors."""
    errors = exc.errors()
    if any(e["type"] != "extra_forbidden" for e in errors):
        return False
    for err in errors:
        node: Any = raw
        *parents, last = err["loc"]
        for part in parents:
            node = node[part]
        if isinstance(node, dict):
            node.pop(last, None)
    return True


def parse_task(raw: Any, limits: ValidationLimits) -> TesTask:
    """The request body as a TesTask, or TaskValidationError. Read-only fields are dropped."""
    if not isinstance(raw, dict):
        raise TaskValidationError("(body): a JSON object (tesTask) is required")
    raw = {k: v for k, v in raw.items() if k not in READ_ONLY_FIELDS}
    for _ in range(100):  # each round strips one batch of unknown fields when they are allowed
        try:
            return TesTask.model_validate(raw)
        except ValidationError as exc:
            if limits.reject_unknown_fields or not _strip_unknown(raw, exc):
                raise TaskValidationError(_describe(exc)) from None
    raise TaskValidationError("(body): too many unknown fields")


def _check_container_path(where: str, path: str) -> None:
    if not path.startswith("/"):
        raise TaskValidationError(f"{where}: must be an absolute path inside the container, got {path!r}")
    if "\x00" in path:
        raise TaskValidationError(f"{where}: must not contain NUL characters")
    if ".." in path.split("/"):
        raise TaskValidationError(f"{where}: must not contain '..' segments")


def _check_executors(task: TesTask) -> None:
    if not task.executors:
        raise TaskValidationError("executors: at least one executor is required")
    for i, ex in enumerate(task.executors):
        where = f"executors[{i}]"
        if not ex.image.strip():
            raise TaskValidationError(f"{where}.image: must not be empty")
        if not ex.command:
            raise TaskValidationError(f"{where}.command: must not be empty")
        for name in ("workdir", "stdin", "stdout", "stderr"):
            value = getattr(ex, name)
            if value is not None:
                _check_container_path(f"{where}.{name}", value)
        for key in ex.env or {}:
            if not key or "=" in key or "\x00" in key:
                raise TaskValidationError(f"{where}.env: invalid variable name {key!r}")


def _check_inputs(task: TesTask, limits: ValidationLimits, check_url: UrlCheck) -> None:
    for i, inp in enumerate(task.inputs or []):
        where = f"inputs[{i}]"
        _check_container_path(f"{where}.path", inp.path)
        if inp.content is not None and inp.url is not None:
            raise TaskValidationError(f"{where}: give either url or content, not both")
        if inp.content is None and inp.url is None:
            raise TaskValidationError(f"{where}: url or content is required")
        if inp.content is not None and inp.type == TesFileType.DIRECTORY:
            raise TaskValidationError(f"{where}: content makes a file; it cannot be a DIRECTORY input")
        if inp.content is not None:
            size = len(inp.content.encode("utf-8"))
            if size > limits.max_content_bytes:
                raise TaskValidationError(
                    f"{where}.content: {size} bytes is over this service's limit of "
                    f"{limits.max_content_bytes} bytes; pass the file by url instead"
                )
        if inp.url is not None:
            reason = check_url(inp.url, inp.type)
            if reason:
                raise TaskValidationError(f"{where}.url: {reason}")


def _check_outputs(task: TesTask, check_url: UrlCheck) -> None:
    """Wildcard outputs: ``path_prefix`` (when given) must be a plain prefix of ``path``. Without it
    the directory before the first wildcard is used (Nextflow sends glob outputs without one); that
    rule lives in tesp_api.transfer.outputs.effective_prefix. Without wildcards it is ignored."""
    for i, out in enumerate(task.outputs or []):
        where = f"outputs[{i}]"
        _check_container_path(f"{where}.path", out.path)
        if has_wildcard(out.path) and out.path_prefix:
            _check_container_path(f"{where}.path_prefix", out.path_prefix)
            if has_wildcard(out.path_prefix):
                raise TaskValidationError(f"{where}.path_prefix: must not contain wildcards")
            if not out.path.startswith(out.path_prefix):
                raise TaskValidationError(f"{where}.path_prefix: must be a prefix of path {out.path!r}")
        reason = check_url(out.url, out.type)
        if reason:
            raise TaskValidationError(f"{where}.url: {reason}")


def _normalise_backend_parameters(task: TesTask, limits: ValidationLimits) -> list[str]:
    """Map keys to the supported spelling (keys are case-insensitive); drop or refuse the rest."""
    res = task.resources
    if res is None or not res.backend_parameters:
        return []
    supported = {k.lower(): k for k in limits.supported_backend_parameters}
    kept: dict[str, str] = {}
    unsupported: list[str] = []
    for key, value in res.backend_parameters.items():
        canonical = supported.get(key.lower())
        if canonical is None:
            unsupported.append(key)
        elif canonical in kept:
            raise TaskValidationError(
                f"resources.backend_parameters: key {key!r} given twice (keys ignore case)"
            )
        else:
            kept[canonical] = value
    if unsupported and res.backend_parameters_strict:
        raise TaskValidationError(
            f"resources.backend_parameters: unsupported keys {sorted(unsupported)} "
            f"(supported: {sorted(supported.values())}) and backend_parameters_strict is true"
        )
    res.backend_parameters = kept or None
    return [f"warning: unsupported backend_parameters key ignored: {key}" for key in unsupported]


def _check_resources(task: TesTask) -> None:
    res = task.resources
    if res is None:
        return
    for name in ("cpu_cores", "ram_gb", "disk_gb"):
        value = getattr(res, name)
        if value is not None and value < 0:
            raise TaskValidationError(f"resources.{name}: must not be negative")


def validate_task(
    raw: Any,
    limits: ValidationLimits,
    *,
    check_input_url: UrlCheck,
    check_output_url: UrlCheck,
) -> ValidatedTask:
    """Parse and check a submitted task (the JSON body of POST /tasks)."""
    task = parse_task(raw, limits)
    _check_executors(task)
    _check_inputs(task, limits, check_input_url)
    _check_outputs(task, check_output_url)
    for i, volume in enumerate(task.volumes or []):
        _check_container_path(f"volumes[{i}]", volume)
    _check_resources(task)
    warnings = _normalise_backend_parameters(task, limits)
    return ValidatedTask(task=task, warnings=warnings)
