"""Bounds on one submitted task, checked on the parsed JSON before it becomes a TesTask.

Why here and why on the raw JSON: a task is stored whole, rendered whole in every FULL answer and
turned into one job script, so an unbounded task costs memory in every later step. Checking the
parsed body first is one cheap walk; a huge list is refused before pydantic builds a model of it
(and before any input URL is resolved). Values of the wrong type are left alone here: model
validation reports them with their own message.

Two kinds of checks:

* :func:`check_text`: every string (keys included) must be valid Unicode text without NUL.
  ``json.loads`` accepts ``"\\udc00"`` (a lone surrogate) and ``"\\u0000"``; neither can be stored
  as UTF-8 or passed to a program as an argument, so they are refused with a 400 naming the field
  instead of failing later (a surrogate made the store's JSON encoding raise: a 500).
* :func:`check_task_limits`: counts and sizes against :class:`TaskLimits` (``api.max_*`` settings).

Pure code: the standard library only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tesp_api.tes.validate import TaskValidationError

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
# Deeper than any TES task; json.loads already stops at Python's recursion limit.
_MAX_DEPTH = 64


class TaskLimitError(TaskValidationError):
    """The task is over one of the service's limits; ``str(exc)`` names the field and the limit."""


@dataclass(frozen=True, slots=True)
class TaskLimits:
    """The ``api.max_*`` settings (see docs/api.md, "Limits"); the defaults equal theirs."""

    max_task_content_bytes: int = 8 * 1024 * 1024
    max_executors: int = 256
    max_inputs: int = 10000
    max_outputs: int = 10000
    max_volumes: int = 1000
    max_tags: int = 1000
    max_env: int = 1000
    max_command_arguments: int = 10000
    max_argument_bytes: int = 1024 * 1024
    max_name_chars: int = 4096
    max_description_chars: int = 65536
    max_url_chars: int = 65536


def _where(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(body)"


def _printable_key(key: str) -> str:
    """A dict key fit for a message: bad characters escaped (a lone surrogate cannot be sent)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8") if _BAD_CHAR.search(key) else key


def _bad_char_reason(text: str) -> str | None:
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character (U+0000), which no file name, argument or variable can hold"
    return f"contains a lone surrogate (U+{ord(char):04X}), which is not valid Unicode text"


def check_text(raw: Any) -> None:
    """TaskValidationError naming the first string (value or key) with NUL or a lone surrogate."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(raw, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            reason = _bad_char_reason(node)
            if reason:
                raise TaskValidationError(f"{_where(path)}: {reason}")
        elif isinstance(node, dict):
            if len(path) > _MAX_DEPTH:
                raise TaskValidationError(f"{_where(path)}: nested too deeply")
            for key, value in node.items():
                reason = _bad_char_reason(key) if isinstance(key, str) else None
                if reason:
                    what = reason.replace("contains", "that contains")
                    raise TaskValidationError(f"{_where(path)}: a key {what}")
                stack.append((value, (*path, _printable_key(str(key)))))
        elif isinstance(node, list):
            if len(path) > _MAX_DEPTH:
                raise TaskValidationError(f"{_where(path)}: nested too deeply")
            stack.extend((item, (*path, i)) for i, item in enumerate(node))


@functools.cache
def _body_bounds(limits: TaskLimits) -> tuple[int, int]:
    """The smallest character/byte limit and the smallest count limit of ``limits``."""
    max_bytes = min(
        limits.max_name_chars,
        limits.max_description_chars,
        limits.max_url_chars,
        limits.max_argument_bytes,
        limits.max_task_content_bytes,
    )
    max_items = min(
        limits.max_executors,
        limits.max_inputs,
        limits.max_outputs,
        limits.max_volumes,
        limits.max_tags,
        limits.max_env,
        limits.max_command_arguments,
    )
    return max_bytes, max_items


def checks_cannot_fail(body: bytes, limits: TaskLimits) -> bool:
    """Whether the JSON text ``body`` itself proves that :func:`check_text` and
    :func:`check_task_limits` of its parsed value would find nothing, so the create path can skip
    the two walks (issue 15: they were ~10 % of a create's CPU). False means only "not proven":
    the caller then runs both checks on the parsed body, as before.

    Each condition and what it rules out:

    * no NUL byte: the text is UTF-8 (in UTF-16 or UTF-32 every ASCII character has a zero byte,
      and a JSON text always has some), and no string holds a raw NUL;
    * valid UTF-8 (strict: no encoded surrogates) and no ``\\u`` escape: every character of every
      string is a literal one, so no string holds NUL or a lone surrogate (``json.loads`` decodes
      with ``surrogatepass``, hence the strict check);
    * at most ``_MAX_DEPTH`` ``[`` and ``{`` bytes: no container lies deeper than the depth limit
      (brackets inside strings only make the count larger);
    * at most as many bytes as the smallest character or byte limit: no string, and no sum of
      strings (command and env bytes, input content), is longer than the text that holds them (in
      UTF-8 a character or an escape never takes fewer bytes in the text than in the value, and
      the quotes pay for the +1 per argument and +2 per env entry of ``max_argument_bytes``);
    * at most the smallest count limit of items: a list or object of n entries needs n - 1 commas.
    """
    max_bytes, max_items = _body_bounds(limits)
    if len(body) > max_bytes:
        return False
    if body.count(b",") + 1 > max_items or body.count(b"[") + body.count(b"{") > _MAX_DEPTH:
        return False
    if b"\x00" in body or b"\\u" in body:
        return False
    if body.isascii():
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    return value if isinstance(value, list) else []


def _dicts(items: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    return ((i, item) for i, item in enumerate(items) if isinstance(item, dict))


def _count(where: str, items: Any, limit: int, what: str, setting: str) -> None:
    if isinstance(items, list | dict) and len(items) > limit:
        raise TaskLimitError(
            f"{where}: {len(items)} {what} is over this service's limit of {limit} (api.{setting})"
        )


def _chars(where: str, value: Any, limit: int) -> None:
    if isinstance(value, str) and len(value) > limit:
        raise TaskLimitError(
            f"{where}: {len(value)} characters is over this service's limit of {limit} characters"
        )


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _check_executor(where: str, ex: dict[str, Any], limits: TaskLimits) -> None:
    for name in ("image", "workdir", "stdin", "stdout", "stderr"):
        _chars(f"{where}.{name}", ex.get(name), limits.max_name_chars)
    command = ex.get("command")
    _count(f"{where}.command", command, limits.max_command_arguments, "arguments", "max_command_arguments")
    env = ex.get("env")
    _count(f"{where}.env", env, limits.max_env, "entries", "max_env")
    size = 0
    if isinstance(command, list):
        size += sum(_utf8_len(arg) + 1 for arg in command if isinstance(arg, str))
    if isinstance(env, dict):
        for key, value in env.items():
            _chars(f"{where}.env", key, limits.max_name_chars)
            size += _utf8_len(str(key)) + 2 + (_utf8_len(value) if isinstance(value, str) else 0)
    if size > limits.max_argument_bytes:
        raise TaskLimitError(
            f"{where}: command arguments and env entries add up to {size} bytes, over this service's "
            f"limit of {limits.max_argument_bytes} bytes (api.max_argument_bytes); "
            "pass large data as an input"
        )


def _check_files(raw: dict[str, Any], key: str, limit: int, limits: TaskLimits) -> int:
    """Counts, names, paths and URLs of inputs or outputs; returns the inputs' content bytes."""
    items = _list(raw, key)
    _count(key, items, limit, key, f"max_{key}")
    content = 0
    for i, item in _dicts(items):
        where = f"{key}[{i}]"
        for name in ("name", "path", "path_prefix"):
            _chars(f"{where}.{name}", item.get(name), limits.max_name_chars)
        _chars(f"{where}.description", item.get("description"), limits.max_description_chars)
        _chars(f"{where}.url", item.get("url"), limits.max_url_chars)
        value = item.get("content")
        if isinstance(value, str):
            content += _utf8_len(value)
    return content


def check_task_limits(raw: Any, limits: TaskLimits) -> None:
    """TaskLimitError naming the first field over a limit; anything not a JSON object is left to
    model validation."""
    if not isinstance(raw, dict):
        return
    _chars("name", raw.get("name"), limits.max_name_chars)
    _chars("description", raw.get("description"), limits.max_description_chars)
    executors = _list(raw, "executors")
    _count("executors", executors, limits.max_executors, "executors", "max_executors")
    for i, ex in _dicts(executors):
        _check_executor(f"executors[{i}]", ex, limits)
    content = _check_files(raw, "inputs", limits.max_inputs, limits)
    if content > limits.max_task_content_bytes:
        raise TaskLimitError(
            f"inputs: content adds up to {content} bytes over all inputs, over this service's limit of "
            f"{limits.max_task_content_bytes} bytes (api.max_task_content_bytes); pass files by url instead"
        )
    _check_files(raw, "outputs", limits.max_outputs, limits)
    volumes = raw.get("volumes")
    _count("volumes", volumes, limits.max_volumes, "volumes", "max_volumes")
    if isinstance(volumes, list):
        for i, volume in enumerate(volumes):
            _chars(f"volumes[{i}]", volume, limits.max_name_chars)
    tags = raw.get("tags")
    _count("tags", tags, limits.max_tags, "tags", "max_tags")
    if isinstance(tags, dict):
        for key, value in tags.items():
            _chars("tags", key, limits.max_name_chars)
            _chars(f"tags.{key[:64]}", value, limits.max_name_chars)
