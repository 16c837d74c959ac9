"""The HTTP side of remote staging for Pulsar over AMQP: Pulsar GETs the inputs and POSTs the outputs.

AMQP cannot carry files, so while a job is set up and after it ran, Pulsar itself calls back to this
service. A small Starlette app, run by the AMQP backend in its own process (so it also works in
`tesp-api worker` processes that serve no API), on ``pulsar.staging_listen``; Pulsar reaches it at
``pulsar.staging_url`` (default: the address it listens on).

Every replica runs one, and each serves every job: nothing a request needs lives in one process.
Files live in the staging directory (``pulsar.staging_dir``, default ``<engine.work_dir>/pulsar-received``),
which replicas on several hosts share (a shared filesystem); the signing key lives in the task store.
So ``staging_url`` may point at a load balancer that routes each request to any replica:

* ``GET  /pulsar-staging/{job}/inputs/{name}?token=...``: the job's input ``name``, staged (linked or
  copied) into ``<staging dir>/.inputs/{job}/{name}`` when the job was prepared.
* ``POST /pulsar-staging/{job}/files?token=...&path=...&file_type=...``: Pulsar's multipart upload
  (field ``file``), written to ``<staging dir>/{job}/{path}`` (through a ``.part`` file, renamed when
  complete). The first upload a replica takes in for a job is reported (``on_received``) so that the
  fact is recorded in the store.
* ``GET /pulsar-staging/healthz``: for the load balancer's health check.

Every URL carries a token: an HMAC over (purpose, job id, name, expiry). The key is shared by every
replica (the task store's ``get_or_create_secret``; without a store, a file in the work directory,
mode 0600), so URLs stay valid across restarts and replicas, and expire after ``transfer.signed_url_ttl``.
Tokens are never logged (access logs are off). Paths are checked: no absolute paths, no ``..``, no empty
components, nothing outside the job's directory. No file is read, written or removed on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

ROUTE_PREFIX = "/pulsar-staging"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COPY_CHUNK = 1024 * 1024


class StagingPathError(ValueError):
    pass


def safe_relative_path(path: str) -> str:
    """``path`` if it is a plain relative path (no leading /, no .., no empty parts, no backslash)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise StagingPathError(f"not a safe relative path: {path!r}")
    return path


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise StagingPathError("bad job id")
    return job_id


class StagingTokens:
    """Signed, expiring tokens bound to one job, one purpose and (for inputs) one file name."""

    def __init__(self, key: bytes, ttl: float, *, also_accepted: Iterable[bytes] = ()) -> None:
        self._key = key
        self._accepted = [key, *(k for k in also_accepted if k != key)]
        self.ttl = ttl

    @classmethod
    def from_key_file(cls, path: Path, ttl: float) -> StagingTokens:
        """Load the key, creating it (0600) on first use, so tokens survive a restart."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes(), ttl)
        with os.fdopen(fd, "wb") as fh:
            key = secrets.token_bytes(32)
            fh.write(key)
        return cls(key, ttl)

    @staticmethod
    def read_key_file(path: Path) -> bytes | None:
        """The key of a key file, if there is one (URLs signed by an earlier version stay valid)."""
        try:
            return path.read_bytes() or None
        except OSError:
            return None

    def _mac(self, purpose: str, job_id: str, name: str, expiry: int, key: bytes | None = None) -> str:
        message = f"{purpose}\0{job_id}\0{name}\0{expiry}".encode()
        return hmac.new(key or self._key, message, hashlib.sha256).hexdigest()

    def sign(self, purpose: str, job_id: str, name: str = "") -> str:
        expiry = int(time.time() + self.ttl)
        return f"{expiry}.{self._mac(purpose, job_id, name, expiry)}"

    def verify(self, token: str | None, purpose: str, job_id: str, name: str = "") -> bool:
        if not token or "." not in token:
            return False
        expiry_text, mac = token.split(".", 1)
        if not expiry_text.isdigit() or int(expiry_text) < time.time():
            return False
        expiry = int(expiry_text)
        return any(
            hmac.compare_digest(mac, self._mac(purpose, job_id, name, expiry, k)) for k in self._accepted
        )


class StagingServer:
    def __init__(
        self,
        received_root: Path,
        tokens: StagingTokens,
        *,
        listen: str = "127.0.0.1:0",
        public_url: str | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host or "127.0.0.1"
        self._port = int(port or 0)
        self._public_url = public_url.rstrip("/") if public_url else None
        self.received_root = received_root
        self.tokens = tokens
        # Job ids never start with ".", so this cannot collide with a job's received directory.
        self.inputs_root = received_root / ".inputs"
        # Called (job id, path) after the first upload this process took in for a job: the backend
        # records the fact in the store. Its failure does not fail the upload (the file is in place).
        self.on_received: Callable[[str, str], Awaitable[None]] | None = None
        self._reported: set[str] = set()
        # Who this is, in the store's bookkeeping: the host and the staging directory it writes to.
        self.replica = f"{socket.gethostname()}:{received_root}"
        self._server: Any = None
        self._serve_task: asyncio.Task[None] | None = None
        self.stats = {"input_gets": 0, "output_posts": 0, "refused": 0}

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        import socket

        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="pulsar-staging-http")
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()  # raises why it could not start
            await asyncio.sleep(0.02)
        log.info(
            "remote staging for Pulsar listening on %s:%d (Pulsar uses %s)",
            self._host,
            self._port,
            self.base_url,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        self._server = None
        self._serve_task = None

    @property
    def base_url(self) -> str:
        if self._public_url:
            return self._public_url
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # ---- what the backend asks for ---------------------------------------------------------------

    def input_path(self, job_id: str, name: str) -> Path:
        """Where the job's input ``name`` is staged (any replica sharing the staging dir finds it)."""
        return self.inputs_root / check_job_id(job_id) / safe_relative_path(name)

    def stage_input(self, job_id: str, name: str, source: Path) -> None:
        """Put ``source`` where every replica serves it: a hard link when the staging dir is on the same
        filesystem (no copy), else a copy through a ``.part`` file. Blocking: call it in a thread."""
        target = self.input_path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.unlink(missing_ok=True)
        try:
            os.link(source, partial)
        except OSError:  # another filesystem (EXDEV), or links not allowed there
            shutil.copyfile(source, partial)
        partial.replace(target)

    def input_url(self, job_id: str, name: str) -> str:
        """The (freshly signed) URL at which Pulsar GETs the job's staged input ``name``."""
        check_job_id(job_id)
        safe_relative_path(name)
        token = self.tokens.sign("in", job_id, name)
        return f"{self.base_url}{ROUTE_PREFIX}/{job_id}/inputs/{quote(name)}?token={token}"

    def register_input(self, job_id: str, name: str, source: Path) -> str:
        """``stage_input`` and ``input_url`` in one (blocking: tests and scripts)."""
        self.stage_input(job_id, name, source)
        return self.input_url(job_id, name)

    def files_endpoint(self, job_id: str) -> str:
        """Where Pulsar POSTs the job's outputs (it appends ``&path=...&file_type=...``)."""
        check_job_id(job_id)
        return f"{self.base_url}{ROUTE_PREFIX}/{job_id}/files?token={self.tokens.sign('out', job_id)}"

    def received_dir(self, job_id: str) -> Path:
        return self.received_root / check_job_id(job_id)

    def received_file(self, job_id: str, name: str) -> Path | None:
        """The file Pulsar POSTed as ``name`` (blocking: a stat, maybe on a network filesystem)."""
        path = self.received_dir(job_id) / safe_relative_path(name)
        return path if path.is_file() else None

    async def forget(self, job_id: str) -> None:
        """Delete the job's staged inputs and received outputs (in a thread: trees may be big)."""
        self._reported.discard(job_id)
        inputs, received = self.inputs_root / check_job_id(job_id), self.received_dir(job_id)

        def remove() -> None:
            shutil.rmtree(inputs, ignore_errors=True)
            shutil.rmtree(received, ignore_errors=True)

        await asyncio.to_thread(remove)

    async def _report_received(self, job_id: str, rel: str) -> None:
        if self.on_received is None or job_id in self._reported:
            return
        try:
            await self.on_received(job_id, rel)
        except Exception:  # the upload itself is in place; only the bookkeeping is missing
            log.warning("could not record the upload of job %s in the store", job_id, exc_info=True)
            return
        self._reported.add(job_id)

    # ---- the HTTP app ----------------------------------------------------------------------------

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import FileResponse, PlainTextResponse, Response
        from starlette.routing import Route

        def refuse(status: int, text: str) -> Response:
            self.stats["refused"] += 1
            return PlainTextResponse(text, status_code=status)

        async def get_input(request: Request) -> Response:
            job_id, name = request.path_params["job_id"], request.path_params["name"]
            try:
                check_job_id(job_id)
                safe_relative_path(name)
            except StagingPathError:
                return refuse(400, "bad path")
            if not self.tokens.verify(request.query_params.get("token"), "in", job_id, name):
                return refuse(403, "forbidden")
            source = self.input_path(job_id, name)
            if not await asyncio.to_thread(source.is_file):
                return refuse(404, "not found")
            self.stats["input_gets"] += 1
            return FileResponse(source, media_type="application/octet-stream")

        async def post_file(request: Request) -> Response:
            job_id = request.path_params["job_id"]
            try:
                check_job_id(job_id)
                rel = safe_relative_path(request.query_params.get("path", ""))
            except StagingPathError:
                return refuse(400, "bad path")
            if not self.tokens.verify(request.query_params.get("token"), "out", job_id):
                return refuse(403, "forbidden")
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    return refuse(400, "multipart field 'file' missing")
                target = self.received_dir(job_id) / rel
                await asyncio.to_thread(_store, upload.file, target)
            self.stats["output_posts"] += 1
            await self._report_received(job_id, rel)
            return PlainTextResponse("ok")

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route(ROUTE_PREFIX + "/healthz", healthz, methods=["GET"]),
                Route(ROUTE_PREFIX + "/{job_id}/inputs/{name:path}", get_input, methods=["GET"]),
                Route(ROUTE_PREFIX + "/{job_id}/files", post_file, methods=["POST"]),
            ]
        )


def _store(source: Any, target: Path) -> None:
    """Copy the (spooled) upload to ``target`` through a .part file: a reader never sees half a file.
    Blocking: run in a thread."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    source.seek(0)
    with partial.open("wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)
    partial.replace(target)
