"""Task ids: uuid4 strings. Opaque to clients; also the Pulsar job id, so they must stay
alphanumerics and dashes (Pulsar puts the job id in directory names and URLs)."""

from __future__ import annotations

import re
import uuid

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_task_id() -> str:
    return str(uuid.uuid4())


def is_safe_id(value: str) -> bool:
    """Whether ``value`` could be a task id we issued (used before touching paths or Pulsar)."""
    return bool(_SAFE_ID.match(value)) and ".." not in value
