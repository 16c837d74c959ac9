"""A real HTTP server that plays both sides of an SSRF attack (stdlib, in a subprocess).

- ``GET /redirect?to=<url>`` answers 302 to ``<url>`` (the attacker's allowed server);
- any other request is a hit on the victim: its method and path are appended to the hits file,
  so a test can prove that *nothing* reached it.
Binds 127.0.0.1 on a free port; stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.services.s3_server import stop, wait_listening


def _handler(hits: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _answer(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(hits, "a") as out:
                out.write(f"{self.command} {self.path}\n")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"victim data\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _answer

    return Handler


@dataclass(frozen=True)
class VictimServer:
    port: int
    hits_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hits(self) -> list[str]:
        return self.hits_file.read_text().splitlines() if self.hits_file.exists() else []

    def redirect_to(self, target: str) -> str:
        from urllib.parse import quote

        return f"{self.url}/redirect?to={quote(target, safe='')}"


@contextlib.contextmanager
def victim_server(tmp: Path) -> Iterator[VictimServer]:
    hits = tmp / "hits.txt"
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.security.victim_server", str(hits)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().decode().strip())
        wait_listening(port, process)
        yield VictimServer(port, hits)
    finally:
        stop(process)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(sys.argv[1])))
    print(server.server_address[1], flush=True)
    server.serve_forever()
