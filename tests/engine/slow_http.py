"""A tiny real HTTP server whose GET blocks until released: holds a task in INITIALIZING
(the engine is fetching its input) for as long as a test needs. Its PUT blocks the same way (an
output upload in progress: a task whose job has ended, results not yet stored)."""

from __future__ import annotations

import http.server
import threading
from typing import Any, Self

from tesp_api.local import free_port


class SlowInputServer:
    def __init__(self, body: bytes = b"late\n") -> None:
        self.release = threading.Event()
        self.requested = threading.Event()
        self.put_release = threading.Event()  # a PUT (an output upload) is answered once this is set
        self.put_requested = threading.Event()
        self.put_bodies: list[bytes] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requested.set()
                outer.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.put_requested.set()
                outer.put_release.wait(60)
                outer.put_bodies.append(data)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/input.txt"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.put_release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
