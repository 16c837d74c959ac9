"""A real HTTP receiver of status callbacks for tests: a stdlib ThreadingHTTPServer on 127.0.0.1 and
a free port, run in a thread of the test process (it must outlive a tesp-api serve the test kills),
shut down at the end of the ``with``.

Every POST is recorded (path, headers, raw body) and verified with the ``standardwebhooks`` package
against the test's secret. ``answers`` is a queue of status codes to answer the next requests
with (then ``default_status``); a 3xx answer points to ``/elsewhere``; ``delays`` slows some paths.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def task(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    url: str
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    default_status: int = 204
    delays: dict[str, float] = field(default_factory=dict)  # path prefix -> seconds before answering
    answered: list[str] = field(default_factory=list)  # paths, in the order their answers went out
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Delivery]:
        """At least ``count`` deliveries (all of them), waiting up to ``timeout`` seconds."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def accepted(self) -> list[Delivery]:
        """The verified deliveries answered 2xx, first of each webhook-id only."""
        with self.lock:
            seen: set[str] = set()
            out = []
            for d in self.deliveries:
                if (
                    d.verified
                    and d.path != "/elsewhere"
                    and d.webhook_id not in seen
                    and d.headers.get("x-answer", "").startswith("2")
                ):
                    seen.add(d.webhook_id)
                    out.append(d)
            return out


@contextmanager
def webhook_receiver(secret: str | None = None) -> Iterator[Receiver]:
    secret = secret or new_secret()
    verifier = Webhook(secret)
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers (a new connection per POST otherwise)

        def do_POST(self) -> None:
            receiver = holder["r"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified = True
            except (WebhookVerificationError, ValueError, KeyError):
                verified = False
            with receiver.lock:
                status = receiver.answers.pop(0) if receiver.answers else receiver.default_status
                headers["x-answer"] = str(status)
                receiver.deliveries.append(Delivery(self.path, headers, body, verified))
                receiver.arrived.notify_all()
            delay = next((d for prefix, d in receiver.delays.items() if self.path.startswith(prefix)), 0.0)
            if delay:
                time.sleep(delay)
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            with receiver.lock:
                receiver.answered.append(self.path)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default backlog of 5 drops concurrent connects (1 s SYN retry)

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client closing its kept-alive connection is no error here

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}", secret=secret)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield holder["r"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
