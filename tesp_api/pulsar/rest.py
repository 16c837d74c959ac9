"""The Pulsar REST backend (httpx): setup, upload, submit, status, cancel, fetch, clean.

Every parameter is a query-string parameter and every body raw file bytes (pulsar/web/routes.py).
Uploads and downloads stream (never a whole file in memory). Connection errors, timeouts and 5xx
answers are retried with exponential backoff; when the retries run out ``BackendUnavailable``
lets the engine wait longer (up to ``pulsar.unreachable_deadline``) before failing the task.
The private token travels as a query parameter (Pulsar reads it only there), so it is redacted
from httpx's request log lines. With ``uds`` the requests go over a Unix socket (Pulsar bound to
``unix:<path>``): an executor that may use the network still cannot reach a socket file it cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tesp_api.metrics import pulsar_request
from tesp_api.pulsar.liveness import DEFAULT_LOST_AFTER, HeartbeatWatch
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobSpec, JobStatus

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
CLEAN_DEFER_MAX = 30.0  # seconds a completed job's DELETE may wait for the other jobs to finish


class _RedactToken(logging.Filter):
    """Removes ``private_token=...`` from httpx's "HTTP Request: ..." lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and any("private_token" in str(a) for a in record.args):
            record.args = tuple(
                str(a).split("private_token=")[0] + "private_token=***" if "private_token" in str(a) else a
                for a in record.args
            )
        return True


def install_token_redaction() -> None:
    """Idempotent: adds the redacting filter to httpx's logger (every client of a Pulsar calls it)."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactToken) for f in httpx_log.filters):
        httpx_log.addFilter(_RedactToken())


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    with path.open("rb") as fh:
        while True:
            chunk = await loop.run_in_executor(None, fh.read, CHUNK)
            if not chunk:
                return
            yield chunk


class RestBackend:
    def __init__(
        self,
        name: str,
        url: str,
        *,
        private_token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_base: float = 0.5,
        max_in_flight: int = 8,
        client: httpx.AsyncClient | None = None,
        uds: str | None = None,
        lost_job_deadline: float = DEFAULT_LOST_AFTER,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._token = private_token
        self.retries = retries
        self.backoff_base = backoff_base
        install_token_redaction()
        self._script_paths: dict[str, str] = {}  # job id -> absolute job script path, from prepare
        # At most `max_in_flight` requests at a time, queued here (O(1) per request) rather than in
        # httpcore's pool, whose queue costs O(waiting x connections) per request: with hundreds of
        # running tasks that made the engine's CPU per poll grow with the number of tasks.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        # Status polls get a small share of their own: hundreds of running tasks polling must not
        # delay the setup/upload/submit of new jobs (Pulsar serves requests with a few threads).
        self._poll_slots = asyncio.Semaphore(max(1, max_in_flight // 2))
        # Deleting a finished job's directory is on no task's path to its final state (it comes
        # after the final compare-and-set): one slot of its own, so a burst of cleanups never
        # competes with the setup, submit and result calls of other tasks.
        self._clean_slots = asyncio.Semaphore(1)
        # And while jobs submitted here still run, a completed job's DELETE waits (up to
        # clean_defer_max): Pulsar's threads go to the running jobs first, housekeeping after.
        self.clean_defer_max = CLEAN_DEFER_MAX
        self._unfinished: set[str] = set()  # submitted here, final status not seen yet
        self._completed: set[str] = set()  # seen "complete" here, not cleaned yet
        self._idle = asyncio.Event()
        self._idle.set()
        self.uds = uds
        # A job Pulsar answers "running" for although its runner is gone (Pulsar restarted): liveness.py.
        self._liveness = HeartbeatWatch(self.fetch, lost_after=lost_job_deadline)
        limits = httpx.Limits(max_connections=2 * max_in_flight, max_keepalive_connections=2 * max_in_flight)
        self._client = client or httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout),
            limits=limits,
            # A socket needs a transport of its own (and no proxy from the environment can apply to it).
            transport=httpx.AsyncHTTPTransport(uds=uds, limits=limits) if uds else None,
        )

    def _params(self, **params: str) -> dict[str, str]:
        if self._token:
            params["private_token"] = self._token
        return params

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        retry_5xx: bool = True,
        slots: asyncio.Semaphore | None = None,
        **kw: Any,
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                async with slots or self._in_flight:
                    with pulsar_request(self.name) as seen:  # tesp_pulsar_request* metrics
                        resp = await self._client.request(method, path, params=self._params(**params), **kw)
                        seen.status = resp.status_code
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        raise BackendError(f"Pulsar {self.name}: {method} {path} -> HTTP {resp.status_code}")
                    return resp
                if not retry_5xx:
                    return resp
                reason = f"HTTP {resp.status_code}"
            if attempt >= self.retries:
                raise BackendUnavailable(f"Pulsar {self.name} unreachable ({method} {path}): {reason}")
            delay = self.backoff_base * (2**attempt)
            attempt += 1
            log.info(
                "Pulsar %s: %s %s failed (%s); retry %d in %.1fs",
                self.name,
                method,
                path,
                reason,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)

    async def setup(self, job_id: str) -> dict[str, Any]:
        resp = await self._request("POST", "/jobs", params={"job_id": job_id})
        return dict(resp.json())

    async def upload(
        self, job_id: str, name: str, kind: str, *, source: Path | None = None, data: bytes | None = None
    ) -> str:
        if source is not None:
            # A fresh stream per attempt: a retried upload starts the file again.
            resp = await self._upload_stream(job_id, name, kind, source)
        else:
            resp = await self._request(
                "POST", f"/jobs/{job_id}/files", params={"name": name, "type": kind}, content=data or b""
            )
        return str(resp.json()["path"])

    async def _upload_stream(self, job_id: str, name: str, kind: str, source: Path) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._request(
                    "POST",
                    f"/jobs/{job_id}/files",
                    params={"name": name, "type": kind},
                    content=_file_chunks(source),
                    retry_5xx=False,
                )
            except BackendUnavailable:
                if attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(self.backoff_base * (2**attempt))

    async def prepare(self, spec: JobSpec) -> None:
        await self.setup(spec.job_id)
        for f in spec.files:
            if f.source is None and f.data is None:
                raise BackendError(
                    f"{f.name}: the REST backend needs the file's bytes (remote staging unsupported)"
                )
            path = await self.upload(spec.job_id, f.name, f.kind, source=f.source, data=f.data)
            if f.name == spec.script_name and f.kind == "tool":
                self._script_paths[spec.job_id] = path

    async def submit(self, spec: JobSpec) -> None:
        script = self._script_paths.pop(spec.job_id, None)
        if script is None:  # prepared by an earlier process (a crash in between): ask Pulsar
            path = await self._request(
                "GET", f"/jobs/{spec.job_id}/files/path", params={"name": spec.script_name, "type": "tool"}
            )
            script = str(path.json()["path"])
        self._unfinished.add(spec.job_id)
        self._idle.clear()
        await self._request(
            "POST",
            f"/jobs/{spec.job_id}/submit",
            params={"command_line": spec.command_line(posixpath.dirname(script))},
        )

    async def status(self, job_id: str) -> JobStatus:
        resp = await self._request("GET", f"/jobs/{job_id}/status", params={}, slots=self._poll_slots)
        status = await self._liveness.review(JobStatus.from_pulsar(job_id, resp.json()))
        if status.is_final:
            self._finished(job_id)
            if status.status == "complete":
                self._completed.add(job_id)
        return status

    def _finished(self, job_id: str) -> None:
        self._unfinished.discard(job_id)
        if not self._unfinished:
            self._idle.set()

    async def cancel(self, job_id: str) -> None:
        await self._request("PUT", f"/jobs/{job_id}/cancel", params={})

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        """A missing file is an HTTP 500 with an HTML page in Pulsar: answered False, not retried."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            try:
                async with (
                    self._in_flight,
                    self._client.stream(
                        "GET", f"/jobs/{job_id}/files", params=self._params(name=name, type="output_workdir")
                    ) as resp,
                ):
                    if resp.status_code != 200:
                        return False
                    tmp = dest.with_name(dest.name + ".part")
                    with tmp.open("wb") as fh:
                        async for chunk in resp.aiter_bytes(CHUNK):
                            fh.write(chunk)
                    tmp.replace(dest)
                    return True
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt >= self.retries:
                    raise BackendUnavailable(f"Pulsar {self.name} unreachable (fetch {name}): {exc}") from exc
                attempt += 1
                await asyncio.sleep(self.backoff_base * (2**attempt))

    async def clean(self, job_id: str) -> None:
        """A completed job's directory is deleted once the other jobs submitted here have finished
        (or after ``clean_defer_max``); a cancelled or failed job's at once."""
        self._finished(job_id)
        if job_id in self._completed and not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.clean_defer_max)
            except TimeoutError:
                pass
        self._completed.discard(job_id)
        await self._request("DELETE", f"/jobs/{job_id}", params={}, slots=self._clean_slots)

    async def healthz(self) -> dict[str, Any]:
        resp = await self._request("GET", "/healthz", params={})
        return dict(resp.json())

    async def aclose(self) -> None:
        self._liveness.close()
        await self._client.aclose()
