"""s3://bucket/key through boto3's managed transfers, run in worker threads.

boto3's TransferManager already does what we need and is well kept: multipart upload above
``chunk_bytes``, ranged parallel download, bounded buffers (about ``s3_max_concurrency`` x
``chunk_bytes`` in flight), per-part retries. Endpoint, region and keys are chosen per bucket from
``transfer.s3`` (an entry without ``bucket`` applies to every bucket), else boto3's default chain.

Why a thread pool of its own: a whole S3 transfer holds one thread from start to end (boto3's
managed transfer blocks; its part threads are its own). In the default executor, a few long
transfers would hold every thread that ``asyncio.to_thread`` elsewhere needs (file work, DNS,
and before its own pool, Basic auth's scrypt), so the service would stall while staging. Here at
most ``S3_TRANSFER_THREADS`` run at once per backend and the rest queue in this pool. Clients are
created in these threads too (boto3's client creation reads files and parses service models:
tens of milliseconds the event loop must not spend). boto3's own per-request retry (2 attempts) is
kept: it is the library's per-part retry inside one managed transfer; whole files are retried only
by the mux (its one retrier).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from typing import Any, TypeVar

import boto3  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from tesp_api.config.settings import S3Credential, TransferSettings
from tesp_api.transfer.base import part_file
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.file import os_reason
from tesp_api.transfer.urls import s3_bucket_key

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
}
T = TypeVar("T")
S3_TRANSFER_THREADS = 16  # whole-file S3 transfers at once per backend (each holds one thread)
POOL_THREAD_PREFIX = "tesp-s3-transfer"
_RETRYABLE = {"500", "502", "503", "504", "SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"}


def s3_error(url: str, exc: BaseException, direction: str) -> TransferError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        if code in _NOT_FOUND:
            return TransferError(url, f"not found (S3 {code})", direction=direction)
        if code in _DENIED:
            return TransferError(url, f"access denied (S3 {code})", direction=direction)
        return TransferError(url, f"S3 error {code}", retryable=code in _RETRYABLE, direction=direction)
    if isinstance(exc, NoCredentialsError):
        return TransferError(url, "no S3 credentials configured for this bucket", direction=direction)
    if isinstance(exc, EndpointConnectionError):
        return TransferError(url, "cannot connect to the S3 endpoint", retryable=True, direction=direction)
    if isinstance(exc, BotoCoreError):
        return TransferError(
            url, f"S3 client problem ({type(exc).__name__})", retryable=True, direction=direction
        )
    if isinstance(exc, OSError):
        return TransferError(url, f"local file problem: {os_reason(exc)}", direction=direction)
    return TransferError(url, f"S3 problem ({type(exc).__name__})", retryable=True, direction=direction)


class S3Backend:
    def __init__(self, settings: TransferSettings) -> None:
        self._credentials = settings.s3
        self._timeout = settings.timeout
        self._config = TransferConfig(
            multipart_threshold=settings.chunk_bytes,
            multipart_chunksize=settings.chunk_bytes,
            max_concurrency=settings.s3_max_concurrency,
            use_threads=True,
        )
        self._clients: dict[int, Any] = {}
        self._lock = Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=S3_TRANSFER_THREADS, thread_name_prefix=POOL_THREAD_PREFIX
        )

    async def _in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in this backend's pool, with the caller's context (log lines
        written in the thread still name the task), like ``asyncio.to_thread`` but never in the
        default executor."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(context.run, fn, *args, **kwargs))

    def _credential(self, bucket: str) -> S3Credential | None:
        for cred in self._credentials:
            if cred.bucket == bucket:
                return cred
        for cred in self._credentials:
            if cred.bucket is None:
                return cred
        return None

    def client_for(self, bucket: str) -> Any:
        """The boto3 client for ``bucket`` (clients are thread-safe and cached per credential)."""
        cred = self._credential(bucket)
        key = id(cred)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._make_client(cred)
            return self._clients[key]

    def _make_client(self, cred: S3Credential | None) -> Any:
        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        config = Config(
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            retries={"mode": "standard", "max_attempts": 2},  # the mux retries whole files on top
            max_pool_connections=max(10, self._config.max_request_concurrency),
        )
        session = boto3.session.Session()
        if cred is None:
            return session.client("s3", config=config)
        return session.client(
            "s3",
            endpoint_url=cred.endpoint_url,
            region_name=cred.region,
            aws_access_key_id=secret(cred.access_key_id),
            aws_secret_access_key=secret(cred.secret_access_key),
            aws_session_token=secret(cred.session_token),
            config=config,
        )

    async def download_file(self, url: str, dest: Path) -> None:
        bucket, key = s3_bucket_key(url)
        tmp = part_file(dest)

        def work() -> None:
            try:
                client = self.client_for(bucket)
                client.download_file(bucket, key, str(tmp), Config=self._config)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

        try:
            await self._in_pool(work)
        except Exception as exc:  # noqa: BLE001 - mapped to a redacted reason
            raise s3_error(url, exc, "download") from None

    async def list_directory(self, url: str) -> list[tuple[str, str]]:
        bucket, prefix = s3_bucket_key(url)
        prefix = prefix.rstrip("/") + "/"

        def walk() -> list[tuple[str, str]]:
            client = self.client_for(bucket)
            found = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if not key.endswith("/"):  # "folder" marker objects hold no data
                        found.append((key[len(prefix) :], f"s3://{bucket}/{key}"))
            return found

        try:
            found = await self._in_pool(walk)
        except Exception as exc:  # noqa: BLE001
            raise s3_error(url, exc, "download") from None
        if not found:
            raise TransferError(url, "no objects under this prefix", direction="download")
        return found

    async def upload_file(self, src: Path, url: str) -> None:
        bucket, key = s3_bucket_key(url)

        def work() -> None:
            self.client_for(bucket).upload_file(str(src), bucket, key, Config=self._config)

        try:
            await self._in_pool(work)
        except Exception as exc:  # noqa: BLE001
            raise s3_error(url, exc, "upload") from None

    def presign(self, url: str, method: str, expires_in: int) -> str:
        """A signed http(s) URL for ``get_object`` / ``put_object`` (for Pulsar remote staging)."""
        bucket, key = s3_bucket_key(url)
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        return str(
            self.client_for(bucket).generate_presigned_url(
                operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
            )
        )

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
