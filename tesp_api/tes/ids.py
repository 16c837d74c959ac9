"""Task ids: uuid4 strings. Opaque to clients; also the Pulsar job id, so they must stay
alphanumerics and dashes (Pulsar puts the job id in directory names and URLs)."""

from __future__ import annotations

import os
import re
import threading

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Random bytes are read from the OS 4 KiB at a time (256 ids), not 16 bytes per id: one getrandom()
# per create cost up to 0.07 ms on a loaded machine (issue 15). The bytes are the same CSPRNG's; the
# buffer is emptied in a forked child (api.workers), so two processes never hand out the same ids.
_CHUNK = 4096
_buffer = b""
_offset = _CHUNK
_lock = threading.Lock()


def _forget_buffer() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", _CHUNK


os.register_at_fork(after_in_child=_forget_buffer)


def new_task_id() -> str:
    """A random (version 4, RFC 4122 variant) UUID as its 36-character string."""
    global _buffer, _offset
    with _lock:
        if _offset >= len(_buffer):
            _buffer, _offset = os.urandom(_CHUNK), 0
        raw = bytearray(_buffer[_offset : _offset + 16])
        _offset += 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_safe_id(value: str) -> bool:
    """Whether ``value`` could be a task id we issued (used before touching paths or Pulsar).
    fullmatch: ``$`` would also admit a trailing newline."""
    return _SAFE_ID.fullmatch(value) is not None and ".." not in value
