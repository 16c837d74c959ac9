"""The HTTP side of remote staging for Pulsar over AMQP: Pulsar GETs the inputs and POSTs the outputs.

AMQP cannot carry files, so while a job is set up and after it ran, Pulsar itself calls back to this
service. A small Starlette app, run by the AMQP backend in its own process (so it also works in
`tesp-api worker` processes that serve no API), on ``pulsar.staging_listen``; Pulsar reaches it at
``pulsar.staging_url`` (default: the address it listens on).

* ``GET  /pulsar-staging/{job}/inputs/{name}?token=...``: a file registered for the job (streamed from
  disk). Registrations are also written to ``received/.inputs/{job}.json``, so a restarted service
  still serves the inputs of a job whose setup message was sent before the restart (Pulsar may
  download them long after, e.g. when it was down).
* ``POST /pulsar-staging/{job}/files?token=...&path=...&file_type=...``: Pulsar's multipart upload
  (field ``file``), written to ``received/{job}/{path}`` (through a ``.part`` file, renamed when
  complete).

Every URL carries a token: an HMAC over (purpose, job id, name, expiry) with a key kept in the work
directory (mode 0600), so URLs stay valid across a restart of this service and expire after
``transfer.signed_url_ttl``. Tokens are never logged (access logs are off). Paths are checked: no
absolute paths, no ``..``, no empty components, nothing outside the job's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import time
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

    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
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

    def _mac(self, purpose: str, job_id: str, name: str, expiry: int) -> str:
        message = f"{purpose}\0{job_id}\0{name}\0{expiry}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, purpose: str, job_id: str, name: str = "") -> str:
        expiry = int(time.time() + self.ttl)
        return f"{expiry}.{self._mac(purpose, job_id, name, expiry)}"

    def verify(self, token: str | None, purpose: str, job_id: str, name: str = "") -> bool:
        if not token or "." not in token:
            return False
        expiry_text, mac = token.split(".", 1)
        if not expiry_text.isdigit() or int(expiry_text) < time.time():
            return False
        return hmac.compare_digest(mac, self._mac(purpose, job_id, name, int(expiry_text)))


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
        self._inputs: dict[tuple[str, str], Path] = {}
        # Job ids never start with ".", so this cannot collide with a job's received directory.
        self._registry = received_root / ".inputs"
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

    def register_input(self, job_id: str, name: str, source: Path) -> str:
        """Serve ``source`` to Pulsar as the job's input ``name``; returns the (signed) URL."""
        check_job_id(job_id)
        safe_relative_path(name)
        if self._inputs.get((job_id, name)) != source:
            self._inputs[(job_id, name)] = source
            self._save_registrations(job_id)
        token = self.tokens.sign("in", job_id, name)
        return f"{self.base_url}{ROUTE_PREFIX}/{job_id}/inputs/{quote(name)}?token={token}"

    def files_endpoint(self, job_id: str) -> str:
        """Where Pulsar POSTs the job's outputs (it appends ``&path=...&file_type=...``)."""
        check_job_id(job_id)
        return f"{self.base_url}{ROUTE_PREFIX}/{job_id}/files?token={self.tokens.sign('out', job_id)}"

    def received_dir(self, job_id: str) -> Path:
        return self.received_root / check_job_id(job_id)

    def received_file(self, job_id: str, name: str) -> Path | None:
        path = self.received_dir(job_id) / safe_relative_path(name)
        return path if path.is_file() else None

    def forget(self, job_id: str) -> None:
        for key in [k for k in self._inputs if k[0] == job_id]:
            del self._inputs[key]
        with contextlib.suppress(FileNotFoundError):
            self._registry_file(job_id).unlink()
        shutil.rmtree(self.received_dir(job_id), ignore_errors=True)

    def registered_input(self, job_id: str, name: str) -> Path | None:
        """The file registered as the job's input ``name``: from memory, else from the on-disk registry
        (registered by this service before a restart)."""
        source = self._inputs.get((job_id, name))
        if source is not None:
            return source
        try:
            saved = json.loads(self._registry_file(job_id).read_text())
        except (OSError, ValueError):
            return None
        text = saved.get(name) if isinstance(saved, dict) else None
        if not isinstance(text, str):
            return None
        self._inputs[(job_id, name)] = Path(text)
        return Path(text)

    def _registry_file(self, job_id: str) -> Path:
        return self._registry / f"{check_job_id(job_id)}.json"

    def _save_registrations(self, job_id: str) -> None:
        """Write the job's registrations (name -> local file) through a temporary file and rename."""
        entries = {name: str(path) for (job, name), path in self._inputs.items() if job == job_id}
        target = self._registry_file(job_id)
        self._registry.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_text(json.dumps(entries))
        partial.replace(target)

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
            source = self.registered_input(job_id, name)
            if source is None or not source.is_file():
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
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route(ROUTE_PREFIX + "/{job_id}/inputs/{name:path}", get_input, methods=["GET"]),
                Route(ROUTE_PREFIX + "/{job_id}/files", post_file, methods=["POST"]),
            ]
        )


def _store(source: Any, target: Path) -> None:
    """Copy the (spooled) upload to ``target`` through a .part file: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    source.seek(0)
    with partial.open("wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)
    partial.replace(target)
