"""The ``Idempotency-Key`` request header of POST /tasks (IETF draft-ietf-httpapi-idempotency-key-header).

A client that does not know whether its create reached the server (a timeout, a dropped
connection, a crash of the server) sends the same request again with the same key and gets the
first task's id instead of a second task. The key is scoped to the owner and kept for
``api.idempotency_ttl_seconds``; the request body is remembered as a hash (``body_fingerprint``),
and the same key with another body is a 409. The store keeps the key with the task in one
transaction (docs/store.md), so a crash between the two cannot make a duplicate. docs/api.md has
the rules for client authors.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tesp_api.api.errors import TesHttpError
from tesp_api.store.port import IdempotencyKey
from tesp_api.store.records import body_fingerprint, utc_now

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def parse_key(value: str) -> str:
    """The key of a header value: a Structured Field string (``"..."``, as the draft defines it) or,
    as many clients send it (Stripe's style), the bare token. 400 for anything else."""
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner, key, i = value[1:-1], [], 0
        while i < len(inner):
            char = inner[i]
            if char == "\\":
                if i + 1 >= len(inner) or inner[i + 1] not in '"\\':
                    raise TesHttpError(400, f"{HEADER}: a bad escape in the quoted string")
                char, i = inner[i + 1], i + 1
            elif char == '"':
                raise TesHttpError(400, f"{HEADER}: an unescaped quote in the quoted string")
            key.append(char)
            i += 1
        value = "".join(key)
    if not value:
        raise TesHttpError(400, f"{HEADER}: must not be empty")
    if len(value) > MAX_KEY_CHARS:
        raise TesHttpError(400, f"{HEADER}: at most {MAX_KEY_CHARS} characters")
    if any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise TesHttpError(400, f"{HEADER}: printable ASCII only")
    return value


def idempotency_of(header: str | None, body: Any, ttl_seconds: float) -> IdempotencyKey | None:
    """What the store needs to honour the header (None: no header, an ordinary create)."""
    if header is None:
        return None
    return IdempotencyKey(
        key=parse_key(header),
        fingerprint=body_fingerprint(body),
        expires_at=utc_now() + timedelta(seconds=ttl_seconds),
    )
