"""The Pulsar REST backend (httpx): setup, upload, submit, status, cancel, fetch, clean.

Every parameter is a query-string parameter and every body raw file bytes (pulsar/web/routes.py).
Uploads and downloads stream (never a whole file in memory; file reads and writes run in threads,
off the event loop). Each method makes ONE attempt and says what a failure means:
``BackendUnavailable`` for connection errors, timeouts and 5xx answers (may go away by itself),
``BackendError`` for 4xx (401/403 name the refused private token). Retrying is not done here but by
the one policy at the backend boundary (retrying.py; the factory wraps every backend in it).
The private token travels as a query parameter (Pulsar reads it only there), so it is redacted
from httpx's request log lines. With ``uds`` the requests go over a Unix socket (Pulsar bound to
``unix:<path>``): an executor that may use the network still cannot reach a socket file it cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tesp_api.metrics import pulsar_request
from tesp_api.pulsar.liveness import ALIVE_NAME, DEFAULT_LOST_AFTER, NO_BEAT_YET, HeartbeatWatch
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobFile, JobSpec, JobStatus
from tesp_api.pulsar.retrying import time_left

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
    """The file's bytes, read in threads (a slow disk never stalls the event loop)."""
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            yield chunk
    finally:
        fh.close()


def _refusal(name: str, what: str, status: int) -> BackendError:
    """A 4xx answer: retrying will not change it. 401/403 say what Pulsar refused."""
    if status in (401, 403):
        return BackendError(
            f"Pulsar {name}: {what} -> HTTP {status}: Pulsar refused the private token "
            "(check pulsar.private_token against Pulsar's app.yml)"
        )
    return BackendError(f"Pulsar {name}: {what} -> HTTP {status}")


class RestBackend:
    # The retry policy's last attempts cut the client timeout to the time left (retrying.time_left).
    honours_time_left = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        private_token: str | None = None,
        timeout: float = 30.0,
        retries: int | None = None,
        backoff_base: float | None = None,
        max_in_flight: int = 8,
        client: httpx.AsyncClient | None = None,
        uds: str | None = None,
        lost_job_deadline: float = DEFAULT_LOST_AFTER,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._token = private_token
        self._client_timeout = timeout
        # ``retries`` and ``backoff_base`` are accepted for old callers and ignored: one attempt per
        # call here, the retry policy (retrying.py) is the only layer that retries.
        del retries, backoff_base
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

    @contextlib.asynccontextmanager
    async def _slot(self, slots: asyncio.Semaphore, what: str) -> AsyncIterator[None]:
        """One of ``slots``; on a retried attempt waited for only until the deadline (requests
        hanging on a stalled Pulsar may hold them all)."""
        left = time_left()
        try:
            await asyncio.wait_for(slots.acquire(), timeout=left)
        except TimeoutError:
            raise BackendUnavailable(
                f"Pulsar {self.name}: no request slot free before the deadline ({what})"
            ) from None
        try:
            yield
        finally:
            slots.release()

    def _timeout(self) -> httpx.Timeout:
        """``client_timeout`` per connect/read/write/pool, cut to the retry policy's time left
        (retrying.time_left) on a retried attempt: a hanging request ends at the deadline."""
        left = time_left()
        if left is None or left >= self._client_timeout:
            return httpx.Timeout(self._client_timeout)
        return httpx.Timeout(left)

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
        slots: asyncio.Semaphore | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One request: the 2xx answer, else BackendUnavailable (no answer, 5xx) or BackendError (4xx)."""
        what = f"{method} {path}"
        try:
            async with self._slot(slots or self._in_flight, what):
                with pulsar_request(self.name) as seen:  # tesp_pulsar_request* metrics
                    resp = await self._client.request(
                        method, path, params=self._params(**params), timeout=self._timeout(), **kw
                    )
                    seen.status = resp.status_code
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise BackendUnavailable(
                f"Pulsar {self.name} unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from exc
        if resp.status_code >= 500:
            raise BackendUnavailable(f"Pulsar {self.name} unavailable ({what}): HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise _refusal(self.name, what, resp.status_code)
        return resp

    async def setup(self, job_id: str) -> dict[str, Any]:
        resp = await self._request("POST", "/jobs", params={"job_id": job_id})
        return dict(resp.json())

    async def upload(
        self, job_id: str, name: str, kind: str, *, source: Path | None = None, data: bytes | None = None
    ) -> str:
        # A fresh stream per call: a retried prepare uploads the file again from its start.
        content: bytes | AsyncIterator[bytes] = _file_chunks(source) if source is not None else data or b""
        resp = await self._request(
            "POST", f"/jobs/{job_id}/files", params={"name": name, "type": kind}, content=content
        )
        return str(resp.json()["path"])

    async def prepare(self, spec: JobSpec) -> None:
        for step in self.prepare_steps(spec):
            await step()

    def prepare_steps(self, spec: JobSpec) -> list[Callable[[], Awaitable[None]]]:
        """``prepare`` as its requests (setup, then one upload per file), each idempotent: the retry
        policy repeats the one that failed, not the whole job's uploads (with a share of requests
        failing, repeating them all would rarely get through a job with many files)."""
        for f in spec.files:
            if f.source is None and f.data is None:
                raise BackendError(
                    f"{f.name}: the REST backend needs the file's bytes (remote staging unsupported)"
                )

        async def setup() -> None:
            await self.setup(spec.job_id)

        def upload(f: JobFile) -> Callable[[], Awaitable[None]]:
            async def step() -> None:
                path = await self.upload(spec.job_id, f.name, f.kind, source=f.source, data=f.data)
                if f.name == spec.script_name and f.kind == "tool":
                    self._script_paths[spec.job_id] = path

            return step

        # The heartbeat file exists from the start ("0": no beat yet), so the liveness watch never asks
        # Pulsar for a missing file (whose error line in Pulsar's log carries the URL, token included).
        alive = JobFile(name=ALIVE_NAME, kind="workdir", data=NO_BEAT_YET)
        return [setup, *(upload(f) for f in (*spec.files, alive))]

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
        """False only when the file is missing: a 404, or Pulsar's own answer to a missing file, an
        HTTP 500 (routes.py's file_response raises HTTPNotFound outside the controller's handler,
        so gunicorn answers its bare "Internal Server Error" page; Pulsar gives no other sign).
        Other 5xx and no answer: BackendUnavailable (retried); 401/403 and other 4xx: BackendError.
        The bytes go to ``dest.part`` (written in threads) and are renamed to ``dest`` when whole."""
        what = f"GET /jobs/{job_id}/files ({name})"
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            async with (
                self._slot(self._in_flight, what),
                self._client.stream(
                    "GET",
                    f"/jobs/{job_id}/files",
                    params=self._params(name=name, type="output_workdir"),
                    timeout=self._timeout(),
                ) as resp,
            ):
                if resp.status_code in (404, 500):
                    return False
                if resp.status_code >= 500:
                    raise BackendUnavailable(
                        f"Pulsar {self.name} unavailable ({what}): HTTP {resp.status_code}"
                    )
                if resp.status_code >= 400:
                    raise _refusal(self.name, what, resp.status_code)
                fh = await asyncio.to_thread(tmp.open, "wb")
                try:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        await asyncio.to_thread(fh.write, chunk)
                finally:
                    await asyncio.to_thread(fh.close)
            await asyncio.to_thread(tmp.replace, dest)
            return True
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise BackendUnavailable(
                f"Pulsar {self.name} unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from exc

    async def clean(self, job_id: str) -> None:
        """A completed job's directory is deleted once the other jobs submitted here have finished
        (or after ``clean_defer_max``); a cancelled or failed job's at once."""
        self._finished(job_id)
        if job_id in self._completed and not self._idle.is_set():
            try:
                await asyncio.wait_for(
                    self._idle.wait(), timeout=min(self.clean_defer_max, time_left() or math.inf)
                )
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
