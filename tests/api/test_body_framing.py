"""The body limit on a real ``tesp-api serve`` (tesp_api/api/limits.py): a body with a declared
Content-Length within the limit is not counted again, because the HTTP server hands the app exactly
the declared bytes; these tests hold that assumption against the server we run (uvicorn)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.services.tesp_serve import running_tesp_serve

MIB = 1024 * 1024
LIMIT = 16 * MIB  # api.max_body_bytes, the default


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    home: Path = tmp_path_factory.mktemp("framing")
    with running_tesp_serve(home) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server may answer and close before it has read it all
        sock.sendall(data)


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` as it is (from a thread) and read the first answer's status line and headers."""
    with socket.create_connection(address, timeout=30) as sock:
        sender = threading.Thread(target=_send_all, args=(sock, request), daemon=True)
        sender.start()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        with contextlib.suppress(OSError):  # unblock the sender; the server may have closed already
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=30)
    return answer


def head(content_length: int | None, chunked: bool = False) -> bytes:
    lines = ["POST /ga4gh/tes/v1/tasks HTTP/1.1", "Host: tes.test", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_bytes_past_the_declared_length_never_reach_the_app(address: tuple[str, int]) -> None:
    body = b'{"executors":[{"image":"alpine","command":["echo","' + b"x" * MIB + b'"]}]}'
    answer = exchange(address, head(20) + body)
    # The app saw the 20 declared bytes (JSON cut mid-object: 400), not the whole valid task (200).
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_a_chunked_body_over_the_limit_is_refused(address: tuple[str, int]) -> None:
    piece = b"x" * MIB
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(LIMIT // MIB + 1)) + b"0\r\n\r\n"
    answer = exchange(address, head(None, chunked=True) + chunks)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
