"""A tiny TCP load balancer for tests: what an operator puts in front of several tesp-api replicas'
AMQP staging servers (``pulsar.staging_url`` points at it).

Each new connection goes to the next backend in turn (round robin); a backend that refuses the
connection (its process is dead) is skipped, as a load balancer's health check would, so a request
lands on any live replica. Plain threads, bound to 127.0.0.1 on a free port, stopped by ``close``.
Bytes are copied as they are, nothing is parsed: the replicas' own token checks decide.
"""

from __future__ import annotations

import itertools
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_CHUNK = 64 * 1024


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


class TcpBalancer:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._turn = itertools.count()
        self.routed: dict[int, int] = {port: 0 for _, port in backends}  # connections per backend port
        balancer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                balancer._relay(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="tcp-balancer", daemon=True)

    def _connect(self) -> socket.socket | None:
        start = next(self._turn)
        for i in range(len(self.backends)):
            host, port = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = socket.create_connection((host, port), timeout=5)
            except OSError:
                continue  # dead or not listening yet: the next one
            upstream.settimeout(None)
            self.routed[port] += 1
            return upstream
        return None

    def _relay(self, client: Any) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        upstream.close()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_balancer(backends: list[tuple[str, int]]) -> Iterator[TcpBalancer]:
    balancer = TcpBalancer(backends)
    balancer.start()
    try:
        yield balancer
    finally:
        balancer.close()
