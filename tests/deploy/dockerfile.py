"""A small Dockerfile reader for lint and consistency checks (no Docker engine needed).

Knows instructions, line continuations, comments, ``ARG`` defaults (substituted into ``FROM``) and
stages. Also answers whether ``.dockerignore`` sends a path to the build (Docker's rules: patterns
in order, the last match wins, ``!`` re-includes, a matching directory covers its content).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass
class Instruction:
    keyword: str
    args: str

    def words(self) -> list[str]:
        """Exec form (JSON list) or shell words; leading --flags kept."""
        text = self.args.strip()
        if text.startswith("["):
            return [str(w) for w in json.loads(text)]
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(path: Path) -> list[Stage]:
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        rest = re.sub(r"\s+", " ", rest).strip()
        if keyword == "ARG" and not stages:
            arg_name, _, default = rest.partition("=")
            args[arg_name] = default
            continue
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stage_name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
            continue
        stages[-1].instructions.append(Instruction(keyword, rest))
    return stages


def inherited(stages: list[Stage], stage: Stage, keyword: str) -> Instruction | None:
    """The instruction in effect in ``stage``, looking through ``FROM <earlier stage>``."""
    own = stage.last(keyword)
    if own is not None:
        return own
    parent = next((s for s in stages if s.name == stage.base), None)
    return inherited(stages, parent, keyword) if parent else None


def copy_sources(stage: Stage) -> list[str]:
    """Build-context sources of COPY/ADD (not ``--from`` copies)."""
    sources = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        words = instruction.words()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _matches(pattern: str, path: PurePosixPath) -> bool:
    candidates = [path, *[p for p in path.parents if str(p) != "."]]
    for candidate in candidates:
        text = str(candidate)
        if fnmatch.fnmatchcase(text, pattern):
            return True
        if pattern.startswith("**/") and any(
            fnmatch.fnmatchcase("/".join(text.split("/")[i:]), pattern[3:])
            for i in range(text.count("/") + 1)
        ):
            return True
    return False


def sent_to_build(dockerignore: Path, relative_path: str) -> bool:
    path = PurePosixPath(relative_path.rstrip("/"))
    excluded = False
    for line in dockerignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if "/" not in pattern.rstrip("*") and "*" in pattern and not pattern.startswith("**"):
            # a top-level wildcard such as `*` matches names at the top of the context only
            if len(path.parts) and fnmatch.fnmatchcase(path.parts[0], pattern):
                excluded = not negate
            continue
        if _matches(pattern, path):
            excluded = not negate
    return not excluded
