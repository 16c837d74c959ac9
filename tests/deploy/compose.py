"""Reading compose files the way Compose does, for checks that need no Docker engine.

Only what the tests need from the compose specification: variable interpolation (``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``$$``) and which
services a set of ``--profile`` flags starts (a service without ``profiles`` always starts; one with
``profiles`` starts when one of them is enabled). docker-compose 1.29 validates the schema but its
``config --services`` ignores profiles, hence this.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
MAIN_FILE = REPO / "docker-compose.yaml"
DTS_FILE = REPO / "docker" / "dts" / "docker-compose.yaml"

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty: Compose stops with the message."""


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value
        if op in (":-", "-"):
            use_default = unset_or_empty if op == ":-" else value is None
            return arg if use_default else value or ""
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else value is None
            if missing:
                raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def raw(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def load(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    result = interpolate(raw(path), env)
    assert isinstance(result, dict)
    return result


def active_services(compose: Mapping[str, Any], profiles: Iterable[str] = ()) -> set[str]:
    enabled = set(profiles)
    return {
        name
        for name, service in compose["services"].items()
        if not service.get("profiles") or enabled & set(service["profiles"])
    }


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)


def variables(path: Path) -> set[tuple[str, str, str]]:
    """Every ``(name, operator, argument)`` the file interpolates (in values, not in comments)."""
    found = set()
    for text in _strings(raw(path)):
        for match in _VARIABLE.finditer(text):
            if match.group("name"):
                found.add((match.group("name"), match.group("op") or "", match.group("arg") or ""))
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def host_ports(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each short-syntax ``ports`` entry."""
    result = []
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        if len(parts) == 2:
            parts = ["0.0.0.0", *parts]
        address, host_port, container_port = parts
        result.append((address, host_port, container_port.split("/")[0]))
    return result
