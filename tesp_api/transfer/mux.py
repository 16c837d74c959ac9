"""TransferMux: one entry point for staging, dispatching by URL scheme, with retry and backoff.

The engine calls ``download`` for each input and ``upload`` for each output. Directories are
walked here (one backend call per file) so every scheme gets the same rules: relative paths are
checked before anything is written, each file is retried on its own, and every uploaded file
gets its own TesOutputFileLog.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from tesp_api.config.settings import TransferSettings
from tesp_api.metrics import count_transfer
from tesp_api.tes.models import TesFileType, TesOutputFileLog
from tesp_api.transfer.base import SchemeBackend, safe_relative
from tesp_api.transfer.egress import EgressPolicy
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.redact import redact_url
from tesp_api.transfer.urls import join_url, scheme_of

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
T = TypeVar("T")
DIRECTORY_PARALLELISM = 4  # files of one directory moved at once

__all__ = ["TransferError", "TransferMux"]


def without_userinfo(url: str) -> str:
    """``url`` minus ``user:password@`` (what output logs record: never a password)."""
    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _inside(path: Path, root: Path) -> bool:
    real, real_root = path.resolve(), root.resolve()
    return real == real_root or real_root in real.parents


async def _all_bounded(jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` with at most DIRECTORY_PARALLELISM at a time; results in order.

    Directories of many small files are dominated by per-file round trips (an FTP login per file),
    so a few at once help a lot; the first failure cancels the rest and is raised as it is.
    """
    limit = asyncio.Semaphore(DIRECTORY_PARALLELISM)

    async def guarded(job: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await job()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(guarded(job)) for job in jobs]
    except* TransferError as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


class TransferMux:
    """``egress``: the SSRF policy every http(s)/ftp connection is checked against. The service
    passes ``EgressPolicy.from_settings(settings)`` (with its control plane); the default knows only
    ``settings`` (allowed/denied hosts and the address ranges)."""

    def __init__(self, settings: TransferSettings, *, egress: EgressPolicy | None = None) -> None:
        self._settings = settings
        self._egress = egress or EgressPolicy(settings)
        self._backends: dict[str, SchemeBackend] = {}

    def _backend(self, url: str, direction: str) -> SchemeBackend:
        scheme = scheme_of(url)
        if scheme not in self._settings.schemes:
            raise TransferError(url, f"unsupported URL scheme {scheme or '(none)'!r}", direction=direction)
        kind = "http" if scheme == "https" else scheme
        if kind not in self._backends:
            self._backends[kind] = self._make_backend(kind)
        return self._backends[kind]

    def _make_backend(self, kind: str) -> SchemeBackend:
        # Imported lazily: a server without S3 use never loads boto3 (slow import, big memory).
        if kind == "http":
            from tesp_api.transfer.http import HttpBackend

            return HttpBackend(self._settings, self._egress)
        if kind == "ftp":
            from tesp_api.transfer.ftp import FtpBackend

            return FtpBackend(self._settings, self._egress)
        if kind == "s3":
            from tesp_api.transfer.s3 import S3Backend

            return S3Backend(self._settings)
        from tesp_api.transfer.file import FileBackend

        return FileBackend(self._settings)

    async def _retrying(self, what: str, url: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op()`` until it succeeds, a non-retryable TransferError, or retries run out.

        The one retrier of the transfer layer (every scheme, every file), on tenacity like the
        Pulsar policy (pulsar/retrying.py): ``transfer.retries`` more attempts after a retryable
        failure, waits of ``retry_backoff`` x 2^n (at most 30 s) plus up to ``retry_backoff`` at
        random. Count-based, not a deadline: a transfer's length depends on its size."""
        backoff = self._settings.retry_backoff
        attempts = self._settings.retries + 1

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = exc.reason if isinstance(exc, TransferError) else repr(exc)
            log.warning(
                "%s of %s failed (%s); retry %d in %.1fs",
                what,
                redact_url(url),
                reason,
                state.attempt_number,
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, TransferError) and exc.retryable),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=backoff, max=MAX_BACKOFF, jitter=backoff),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await op()
        except TransferError as exc:
            if not exc.retryable or attempts == 1:
                raise
            raise TransferError(
                url, f"{exc.reason} (gave up after {attempts} attempts)", direction=exc.direction
            ) from None
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def _download_one(self, backend: SchemeBackend, url: str, dest: Path) -> None:
        started = time.monotonic()
        await self._retrying("download", url, lambda: backend.download_file(url, dest))
        size = dest.stat().st_size  # noqa: ASYNC240 - one stat of the local file just written
        count_transfer(url, "download", size)
        log.info(
            "downloaded %s (%d bytes, %.2fs)",
            redact_url(url),
            size,
            time.monotonic() - started,
        )

    async def download(
        self, url: str, dest: Path, file_type: TesFileType | None = TesFileType.FILE
    ) -> list[Path]:
        """Fetch ``url`` to ``dest``; for a DIRECTORY, everything below it, recursively.

        Returns the local files written. ``streamable`` inputs are downloaded like any other.
        """
        backend = self._backend(url, "download")
        dest = Path(dest)
        if file_type != TesFileType.DIRECTORY:
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            await self._download_one(backend, url, dest)
            return [dest]
        entries = await self._retrying("listing", url, lambda: backend.list_directory(url))
        planned: list[tuple[str, Path]] = []
        for relative, file_url in entries:  # every name is checked before anything is written
            safe = safe_relative(relative)
            if safe is None:
                raise TransferError(
                    url, "the directory holds an entry with an unsafe name", direction="download"
                )
            planned.append((file_url, dest / safe))
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)

        async def one(file_url: str, target: Path) -> Path:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await self._download_one(backend, file_url, target)
            return target

        return await _all_bounded([functools.partial(one, u, t) for u, t in planned])

    async def _upload_one(self, backend: SchemeBackend, src: Path, url: str, path: str) -> TesOutputFileLog:
        started = time.monotonic()
        size = src.stat().st_size  # noqa: ASYNC240 - one stat of a local file
        await self._retrying("upload", url, lambda: backend.upload_file(src, url))
        count_transfer(url, "upload", size)
        log.info("uploaded %s (%d bytes, %.2fs)", redact_url(url), size, time.monotonic() - started)
        return TesOutputFileLog(url=without_userinfo(url), path=path, size_bytes=str(size))

    async def upload(
        self,
        src: Path,
        url: str,
        file_type: TesFileType | None = TesFileType.FILE,
        *,
        container_path: str | None = None,
        confine_to: Path | None = None,
    ) -> list[TesOutputFileLog]:
        """Store the local ``src`` at ``url``: one TesOutputFileLog per file uploaded.

        For a DIRECTORY every file below ``src`` goes to ``url`` + its relative path.
        ``container_path`` is the path the task saw (what the logs report); default ``str(src)``.
        ``confine_to`` (the job's directory): a file whose real path leaves it, e.g. a symlink the
        job made to a host file, is refused for FILE and skipped in a DIRECTORY.
        """
        backend = self._backend(url, "upload")
        src = Path(src)
        shown = container_path if container_path is not None else str(src)
        if file_type != TesFileType.DIRECTORY:
            if not await asyncio.to_thread(src.is_file):
                raise TransferError(
                    url, f"the output {shown} does not exist or is not a file", direction="upload"
                )
            if confine_to is not None and not _inside(src, confine_to):
                raise TransferError(
                    url, f"the output {shown} points outside the job directory", direction="upload"
                )
            return [await self._upload_one(backend, src, url, shown)]
        if not await asyncio.to_thread(src.is_dir):
            raise TransferError(url, f"the output directory {shown} does not exist", direction="upload")
        root = confine_to if confine_to is not None else src
        files = await asyncio.to_thread(
            lambda: sorted(p for p in src.rglob("*") if p.is_file() and _inside(p, root))
        )
        jobs: list[Callable[[], Awaitable[TesOutputFileLog]]] = []
        for path in files:
            relative = path.relative_to(src).as_posix()
            target_url, target_path = join_url(url, relative), shown.rstrip("/") + "/" + relative
            jobs.append(functools.partial(self._upload_one, backend, path, target_url, target_path))
        return await _all_bounded(jobs)

    def presign(self, url: str, method: str = "GET") -> str:
        """A signed https URL for an ``s3://`` object (GET or PUT), valid ``signed_url_ttl`` seconds."""
        backend = self._backend(url, "presign")
        presign = getattr(backend, "presign", None)
        if presign is None:
            raise TransferError(url, "only s3:// URLs can be presigned", direction="presign")
        return str(presign(url, method, int(self._settings.signed_url_ttl)))

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.aclose()
