"""Shell words that may contain the job's host directory, which only the job script knows.

The job script locates itself at run time (so the same script works whatever directory Pulsar
gives the job), hence a runtime's argv cannot hold absolute host paths when it is built. A
``HostPath`` stands for "this path under the job's working directory"; ``render`` turns an argv
into one shell-safe line (every literal single-quoted, the directory as ``"$TES_WORK"``), and
``resolve`` gives the plain strings for a known directory (what the unit tests compare).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

WORK_VAR = "TES_WORK"


@dataclass(frozen=True, slots=True)
class HostPath:
    """``rel`` under the job's working directory on the Pulsar host (no leading slash)."""

    rel: str


@dataclass(frozen=True, slots=True)
class Concat:
    """One word made of several parts, e.g. ``<host>:/data:ro`` for a bind mount."""

    parts: tuple[str | HostPath, ...]


Word = str | HostPath | Concat


def _render_part(part: str | HostPath) -> str:
    if isinstance(part, HostPath):
        return f'"${WORK_VAR}"' + (shlex.quote("/" + part.rel) if part.rel else "")
    return shlex.quote(part) if part else ""


def render_word(word: Word) -> str:
    if isinstance(word, Concat):
        rendered = "".join(_render_part(p) for p in word.parts)
        return rendered or "''"
    return _render_part(word) or "''"


def render(words: list[Word]) -> str:
    """One shell command line; nothing in it is ever interpreted by the shell."""
    return " ".join(render_word(w) for w in words)


def resolve_word(word: Word, work_dir: str) -> str:
    if isinstance(word, HostPath):
        return work_dir.rstrip("/") + ("/" + word.rel if word.rel else "")
    if isinstance(word, Concat):
        return "".join(resolve_word(p, work_dir) for p in word.parts)
    return word


def resolve(words: list[Word], work_dir: str) -> list[str]:
    return [resolve_word(w, work_dir) for w in words]
