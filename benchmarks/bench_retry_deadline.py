"""How well `pulsar.unreachable_deadline` holds on the real clock, for three ways Pulsar can be down.

Each case builds the REST backend behind the one retry policy (pulsar/factory.py) with
``client_timeout`` and ``unreachable_deadline`` as given, makes one ``status`` call, and prints the
seconds until it raised and that as a share of the deadline. The cases:

* refused: nothing listens on the port (connection refused at once);
* stalled: a socket accepts and never answers (every attempt waits for client_timeout);
* 503: a real Pulsar behind the faulty proxy answering 503 to everything.

Run: .venv/bin/python -m benchmarks.bench_retry_deadline [--deadline 20] [--client-timeout 8]
(the nested loops this replaced overshot by about (retries + 1) x client_timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from tesp_api.config.settings import Settings
from tesp_api.local import free_port
from tesp_api.pulsar.factory import build_backends
from tesp_api.pulsar.port import BackendUnavailable
from tesp_api.pulsar.retrying import retry_listener


async def measure(url: str, deadline: float, client_timeout: float) -> tuple[float, int]:
    settings = Settings.model_validate(
        {"pulsar": {"url": url, "unreachable_deadline": deadline, "client_timeout": client_timeout}}
    )
    (backend,) = build_backends(settings).values()
    attempts = 0

    def count(exc: BaseException, waited: float) -> None:
        nonlocal attempts
        attempts += 1

    started = time.monotonic()
    try:
        with retry_listener(count):
            await backend.status("bench")
    except BackendUnavailable:
        pass
    took = time.monotonic() - started
    await backend.aclose()
    return took, attempts + 1


def stalled_socket() -> tuple[socket.socket, int]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return sock, int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deadline", type=float, default=20.0)
    parser.add_argument("--client-timeout", type=float, default=8.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one warning per retry otherwise
    d, ct = args.deadline, args.client_timeout
    print(f"unreachable_deadline={d:g}s client_timeout={ct:g}s")
    print(f"{'case':<10} {'took s':>8} {'x deadline':>10} {'attempts':>8}")

    def row(case: str, took: float, attempts: int, first: float = 0.0) -> None:
        print(f"{case:<10} {took:8.2f} {(took - first) / d:10.3f} {attempts:8d}")

    took, n = asyncio.run(measure(f"http://127.0.0.1:{free_port()}", d, ct))
    row("refused", took, n)
    sock, port = stalled_socket()
    try:
        took, n = asyncio.run(measure(f"http://127.0.0.1:{port}", d, ct))
        row("stalled", took, n, first=ct)  # the deadline counts from the first failure (after ct)
    finally:
        sock.close()
    from tests.services.faulty_proxy import faulty_proxy
    from tests.services.pulsar import pulsar_server

    with (
        pulsar_server(Path(tempfile.mkdtemp(prefix="bench-retry-"))) as pulsar,
        faulty_proxy(pulsar.url, share=1.0, kinds=("503",)) as proxy,
    ):
        took, n = asyncio.run(measure(proxy.url, d, ct))
        row("503", took, n)


if __name__ == "__main__":
    main()
