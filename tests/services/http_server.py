"""A small real HTTP file server for tests (Starlette + uvicorn in a subprocess).

GET/HEAD serve files below ROOT, PUT/POST stream the request body to ROOT/<path> (parents made).
Test hooks, all under fixed prefixes:
  /private/...   needs ``Authorization: Bearer <token>`` (401 without, 403 with a wrong one)
  /basic/...     needs HTTP basic auth USER/PASSWORD
  /flaky/N/...   answers 503 to the first N requests for that path, then behaves normally
  /redirect/...  302 to the same path without the /redirect prefix
  /gzipped/...   served with ``Content-Encoding: gzip`` (as some servers do for .gz files)
Started on 127.0.0.1 and a free port, stopped by PID at the end.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services.s3_server import stop, wait_listening

TOKEN = "bearer-t0ken-never-logged"
USER = "webuser"
PASSWORD = "http-pa55word-never-logged"


def create_app(root: Path, token: str = TOKEN, user: str = USER, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    real_root = root.resolve()
    flaky_seen: Counter[str] = Counter()

    def local(path: str) -> Path | None:
        target = (real_root / path).resolve()
        return target if real_root in target.parents else None

    async def handle(request: Request) -> Response:
        path = request.path_params["path"]
        if path.startswith("redirect/"):
            return RedirectResponse("/" + path.removeprefix("redirect/"), status_code=302)
        if path.startswith("private/"):
            given = request.headers.get("authorization")
            if given is None:
                return PlainTextResponse("login needed", status_code=401)
            if given != f"Bearer {token}":
                return PlainTextResponse("forbidden", status_code=403)
        if path.startswith("basic/"):
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("authorization") != expected:
                return PlainTextResponse("login needed", status_code=401)
        if path.startswith("flaky/"):
            _, count, _rest = path.split("/", 2)
            flaky_seen[path] += 1
            if flaky_seen[path] <= int(count):
                return PlainTextResponse("try later", status_code=503)
        target = local(path)
        if target is None:
            return PlainTextResponse("bad path", status_code=400)
        if request.method in ("GET", "HEAD"):
            if not target.is_file():
                return PlainTextResponse("not found", status_code=404)
            headers = {"Content-Encoding": "gzip"} if path.startswith("gzipped/") else None
            return FileResponse(target, headers=headers)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        return PlainTextResponse("stored", status_code=201)

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "HEAD", "PUT", "POST"])])


def _serve(root: str) -> None:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(create_app(Path(root)), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


@dataclass(frozen=True)
class HttpServer:
    base_url: str
    root: Path
    token: str = TOKEN
    user: str = USER
    password: str = PASSWORD

    @property
    def host(self) -> str:
        return self.base_url.split("://", 1)[1]


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[HttpServer]:
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.services.http_server", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().decode().strip())
        wait_listening(port, process)
        yield HttpServer(f"http://127.0.0.1:{port}", root)
    finally:
        stop(process)


if __name__ == "__main__":
    _serve(sys.argv[1])
