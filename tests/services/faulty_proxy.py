"""A faulty HTTP proxy in front of a real Pulsar: some requests, on every endpoint, go wrong.

For each request the proxy draws (``random.Random(seed)``) whether it fails and how:

* ``503``: answered 503 Service Unavailable, never forwarded (a load balancer with no backend);
* ``drop``: the connection is closed before anything is forwarded (the request never reached Pulsar);
* ``drop-after``: forwarded, Pulsar's whole answer read, then the connection is closed without it
  (Pulsar did the work, the client never hears: the case that makes a blind retried submit run a job
  twice).

Everything else is forwarded as it is. ``GET /__faults__`` answers the counts as JSON (never
forwarded, never faulty): requests, each fault kind, Pulsar's statuses, and each "METHOD /path". It runs as its own process (``python -m tests.services.faulty_proxy``) on
127.0.0.1 and a free port, started and stopped by PID by ``faulty_proxy()``. HTTP parsing is h11's
(what httpx itself is built on), the upstream requests are httpx's; bodies are buffered (test files
are small).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import httpx

from tests.services.die_with_parent import die_with_parent
from tests.services.s3_server import free_port, stop, wait_listening

KINDS = ("503", "drop", "drop-after")
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"content-length",
    b"host",
    b"te",
    b"upgrade",
}


class _Proxy:
    def __init__(self, upstream: str, share: float, kinds: list[str], seed: int) -> None:
        self.share = share
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(120.0))
        self.counts: Counter[str] = Counter()

    def _draw(self) -> str | None:
        if self.rng.random() >= self.share:
            return None
        return self.rng.choice(self.kinds)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                status, headers, content = await self._answer(request, body)
                if status is None:  # a dropped connection
                    writer.transport.abort()
                    return
                out = [(b"content-length", str(len(content)).encode()), *headers]
                writer.write(conn.send(h11.Response(status_code=status, headers=out)) or b"")
                writer.write(conn.send(h11.Data(data=content)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int | None, list[tuple[bytes, bytes]], bytes]:
        target = request.target.decode()
        if target.startswith("/__faults__"):
            return 200, [(b"content-type", b"application/json")], json.dumps(dict(self.counts)).encode()
        self.counts["requests"] += 1
        self.counts[f"{request.method.decode()} {target.split('?', 1)[0]}"] += 1
        fault = self._draw()
        if fault is not None:
            self.counts[fault] += 1
        if fault == "503":
            return 503, [(b"content-type", b"text/plain")], b"injected 503\n"
        if fault == "drop":
            return None, [], b""
        headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
        try:
            resp = await self.client.request(request.method.decode(), target, headers=headers, content=body)
        except httpx.HTTPError:
            self.counts["upstream-errors"] += 1
            return None, [], b""  # Pulsar itself dropped it: pass that on
        self.counts[f"status-{resp.status_code}"] += 1
        if fault == "drop-after":
            return None, [], b""
        out = [
            (k.encode(), v.encode()) for k, v in resp.headers.items() if k.lower().encode() not in _HOP_BY_HOP
        ]
        return resp.status_code, out, resp.content


async def _main(port: int, upstream: str, share: float, kinds: list[str], seed: int) -> None:
    proxy = _Proxy(upstream, share, kinds, seed)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@dataclass(frozen=True)
class FaultyProxy:
    url: str

    def faults(self) -> dict[str, int]:
        """What the proxy has done so far: requests, and the number of each fault kind."""
        counts: dict[str, Any] = httpx.get(f"{self.url}/__faults__", timeout=10).json()
        return {str(k): int(v) for k, v in counts.items()}


@contextlib.contextmanager
def faulty_proxy(
    upstream: str, *, share: float = 0.3, kinds: tuple[str, ...] = KINDS, seed: int = 12
) -> Iterator[FaultyProxy]:
    """The proxy in front of ``upstream`` (a Pulsar URL), failing ``share`` of the requests."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.services.faulty_proxy",
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--share",
            str(share),
            "--kinds",
            ",".join(kinds),
            "--seed",
            str(seed),
        ],
        cwd=root,
        start_new_session=True,  # its own process group, stopped by PID
        preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, see die_with_parent.py
    )
    try:
        wait_listening(port, process)
        yield FaultyProxy(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    assert all(k in KINDS for k in kinds), kinds
    asyncio.run(_main(args.port, args.upstream, args.share, kinds, args.seed))
