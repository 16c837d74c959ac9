"""http(s): GET for inputs, PUT for outputs, with httpx streaming both ways.

Credentials (headers, bearer token, basic) are chosen per host from ``transfer.http``. Redirects
are followed by hand so that the credentials of the *new* host are used: httpx alone would
forward custom headers (an API key) to whatever host a redirect names.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tesp_api.config.settings import HttpCredential, TransferSettings
from tesp_api.transfer.base import part_file
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.file import os_reason

MAX_REDIRECTS = 10


def _host_key(url: httpx.URL) -> tuple[str, str]:
    host = url.host.lower()
    return host, f"{host}:{url.port}" if url.port else host


def status_error(url: str, status: int, direction: str) -> TransferError:
    if status in (401, 403):
        reason = f"access denied (HTTP {status})"
    elif status == 404:
        reason = "not found (HTTP 404)"
    else:
        reason = f"server answered HTTP {status}"
    return TransferError(url, reason, retryable=status == 429 or status >= 500, direction=direction)


def _caused_by_dns(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_error(url: str, exc: httpx.TransportError, direction: str) -> TransferError:
    host = urlsplit(url).hostname or "?"
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    elif isinstance(exc, httpx.ConnectError) and _caused_by_dns(exc):
        reason = f"cannot resolve host name {host}"
    elif isinstance(exc, httpx.ConnectError):
        reason = f"cannot connect to {host}"
    else:
        reason = f"connection problem ({type(exc).__name__})"
    return TransferError(url, reason, retryable=True, direction=direction)


class HttpBackend:
    def __init__(self, settings: TransferSettings) -> None:
        self._credentials = settings.http
        self._chunk = settings.chunk_bytes
        self._follow = settings.follow_redirects
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout), follow_redirects=False)

    def _credential(self, url: httpx.URL) -> HttpCredential | None:
        host, host_port = _host_key(url)
        for cred in self._credentials:
            if cred.host.lower() in (host, host_port):
                return cred
        return None

    def _auth_headers(self, url: httpx.URL) -> tuple[dict[str, str], httpx.Auth | None]:
        cred = self._credential(url)
        headers: dict[str, str] = {}
        auth: httpx.Auth | None = None
        if cred is not None:
            headers.update({k: v.get_secret_value() for k, v in cred.headers.items()})
            if cred.bearer_token is not None:
                headers["Authorization"] = f"Bearer {cred.bearer_token.get_secret_value()}"
            elif cred.username is not None:
                password = cred.password.get_secret_value() if cred.password else ""
                auth = httpx.BasicAuth(cred.username, password)
        return headers, auth

    async def _get(self, url: str) -> httpx.Response:
        """A streamed GET response (2xx), redirects followed with per-host credentials."""
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers, auth = self._auth_headers(target)
            # The bytes as stored: no on-the-fly compression, and a .gz served with
            # "Content-Encoding: gzip" is not silently unpacked.
            headers["Accept-Encoding"] = "identity"
            request = self._client.build_request("GET", target, headers=headers)
            response = await self._client.send(request, stream=True, auth=auth or httpx.USE_CLIENT_DEFAULT)
            if self._follow and response.is_redirect and "location" in response.headers:
                await response.aclose()
                target = target.join(response.headers["location"])
                continue
            if response.status_code >= 300:
                await response.aclose()
                raise status_error(url, response.status_code, "download")
            return response
        raise TransferError(url, "too many redirects", direction="download")

    async def download_file(self, url: str, dest: Path) -> None:
        tmp = part_file(dest)
        try:
            response = await self._get(url)
            try:
                with await asyncio.to_thread(open, tmp, "wb") as out:
                    async for block in response.aiter_raw(self._chunk):
                        await asyncio.to_thread(out.write, block)
            finally:
                await response.aclose()
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise transport_error(url, exc, "download") from None
        except httpx.InvalidURL:
            raise TransferError(url, "malformed URL", direction="download") from None
        except OSError as exc:
            raise TransferError(
                url, f"cannot write the local copy: {os_reason(exc)}", direction="download"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    async def list_directory(self, url: str) -> list[tuple[str, str]]:
        raise TransferError(
            url, "http(s) has no standard directory listing; DIRECTORY is not supported", direction="download"
        )

    async def _chunks(self, src: Path) -> AsyncIterator[bytes]:
        with await asyncio.to_thread(open, src, "rb") as fin:
            while block := await asyncio.to_thread(fin.read, self._chunk):
                yield block

    async def upload_file(self, src: Path, url: str) -> None:
        try:
            target = httpx.URL(url)
            headers, auth = self._auth_headers(target)
            # A known length avoids chunked encoding, which signed-URL PUT targets (S3) refuse.
            headers["Content-Length"] = str(src.stat().st_size)
            headers.setdefault("Content-Type", "application/octet-stream")
            response = await self._client.put(
                target, content=self._chunks(src), headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.TransportError as exc:
            raise transport_error(url, exc, "upload") from None
        except httpx.InvalidURL:
            raise TransferError(url, "malformed URL", direction="upload") from None
        except OSError as exc:
            raise TransferError(
                url, f"cannot read the local file: {os_reason(exc)}", direction="upload"
            ) from None
        if response.status_code >= 300:
            raise status_error(url, response.status_code, "upload")

    async def aclose(self) -> None:
        await self._client.aclose()
