"""Argv words that the job runner resolves on the Pulsar host: what only it knows.

A runtime's argv is built in the service, but the job's host directory is known only once Pulsar
has made it, and the task's env must reach the runtime through a file or fd (never argv). So an argv
is a list of words: a literal string, a ``HostPath`` ("this path under the job's working directory"),
a ``Concat`` of both (``<host>:/data:ro``), an ``EnvFile`` (the path of a 0600 ``KEY=VALUE`` file the
runner writes for docker/podman ``--env-file``) or an ``ArgsFd`` (the number of an fd holding
NUL-separated ``--setenv K V`` args, for bwrap ``--args``).

``to_spec`` turns an argv into the JSON the runner reads (engine/runner/tes_runner.py); ``resolve``
gives the plain strings for a known directory (what the unit tests compare); ``render`` gives a
shell-quoted line for logs, docs and benchmarks (nothing ever runs it through a shell).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

WORK_VAR = "TES_WORK"


@dataclass(frozen=True, slots=True)
class HostPath:
    """``rel`` under the job's working directory on the Pulsar host (no leading slash)."""

    rel: str


@dataclass(frozen=True, slots=True)
class Concat:
    """One word made of several parts, e.g. ``<host>:/data:ro`` for a bind mount."""

    parts: tuple[str | HostPath, ...]


@dataclass(frozen=True, slots=True)
class EnvFile:
    """The path of the executor's env file (``KEY=VALUE`` lines, mode 0600, removed after the executor)."""


@dataclass(frozen=True, slots=True)
class ArgsFd:
    """The number of an fd (an unlinked 0600 file) holding NUL-separated ``--setenv K V`` arguments."""


Word = str | HostPath | Concat | EnvFile | ArgsFd

ENV_FILE_PLACEHOLDER = "<env-file>"
ARGS_FD_PLACEHOLDER = "<args-fd>"


def _part_spec(part: str | HostPath) -> str | dict[str, str]:
    return {"work": part.rel} if isinstance(part, HostPath) else part


def word_spec(word: Word) -> Any:
    """One word as the runner's JSON: a string, {"work": rel}, {"join": [...]}, {"env_file": 1}, {"args_fd": 1}."""
    if isinstance(word, str):
        return word
    if isinstance(word, HostPath):
        return {"work": word.rel}
    if isinstance(word, Concat):
        return {"join": [_part_spec(p) for p in word.parts]}
    if isinstance(word, EnvFile):
        return {"env_file": 1}
    return {"args_fd": 1}


def to_spec(words: list[Word]) -> list[Any]:
    return [word_spec(w) for w in words]


def _render_part(part: str | HostPath) -> str:
    if isinstance(part, HostPath):
        return f'"${WORK_VAR}"' + (shlex.quote("/" + part.rel) if part.rel else "")
    return shlex.quote(part) if part else ""


def render_word(word: Word) -> str:
    if isinstance(word, EnvFile):
        return ENV_FILE_PLACEHOLDER
    if isinstance(word, ArgsFd):
        return ARGS_FD_PLACEHOLDER
    if isinstance(word, Concat):
        rendered = "".join(_render_part(p) for p in word.parts)
        return rendered or "''"
    return _render_part(word) or "''"


def render(words: list[Word]) -> str:
    """One shell-quoted line, for humans (logs, docs); the runner never uses a shell."""
    return " ".join(render_word(w) for w in words)


def resolve_word(word: Word, work_dir: str) -> str:
    if isinstance(word, HostPath):
        return work_dir.rstrip("/") + ("/" + word.rel if word.rel else "")
    if isinstance(word, Concat):
        return "".join(resolve_word(p, work_dir) for p in word.parts)
    if isinstance(word, EnvFile):
        return ENV_FILE_PLACEHOLDER
    if isinstance(word, ArgsFd):
        return ARGS_FD_PLACEHOLDER
    return word


def resolve(words: list[Word], work_dir: str) -> list[str]:
    return [resolve_word(w, work_dir) for w in words]
