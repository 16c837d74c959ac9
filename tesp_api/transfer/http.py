"""http(s): GET for inputs, PUT for outputs, with httpx streaming both ways.

Credentials (headers, bearer token, basic) are chosen per host from ``transfer.http``. Redirects
are followed by hand so that the credentials of the *new* host are used: httpx alone would
forward custom headers (an API key) to whatever host a redirect names.

SSRF guard (tesp_api/transfer/egress.py): every hop of a redirect chain is checked before it is
requested, and every new connection is made by :class:`GuardedBackend`, which resolves the host
itself, refuses it unless every address is allowed, and connects to the checked address literal
(TLS still verifies the URL's host name). So no request byte reaches a refused address, whatever
DNS answers between the create-time check and the connection. Proxies from the environment are
not used (a proxy would make the connection for us, out of the guard's sight).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx

from tesp_api.config.settings import HttpCredential, TransferSettings
from tesp_api.transfer.base import part_file
from tesp_api.transfer.egress import EgressDenied, EgressPolicy, Unresolvable
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.file import os_reason
from tesp_api.transfer.redact import install_log_masking, redact_url

MAX_REDIRECTS = 10

install_log_masking("httpx")  # httpx logs each request's full URL (signatures included) at INFO/DEBUG


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend behind the egress policy: connect only to checked addresses."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._policy.checked_addresses(host, port)
        except Unresolvable:
            raise httpcore.ConnectError(f"cannot resolve {host}") from socket.gaierror(host)
        last: Exception | None = None
        for address in addresses:  # each one was checked; the first that answers wins
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout,
                    local_address,
                    socket_options,  # type: ignore[arg-type]
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: object = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied("unix sockets are never a transfer target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: EgressPolicy) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (SSL_CERT_FILE honoured) whose connections go through GuardedBackend."""
    transport = httpx.AsyncHTTPTransport(trust_env=True)
    pool = transport._pool  # httpx builds it; rebuilt here with the same TLS context and our backend
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # pragma: no cover - httpx internals moved
        raise TypeError("httpx transport internals changed: cannot install the SSRF guard")
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(policy),
    )
    return transport


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


def denied_error(url: str, exc: EgressDenied, direction: str, *, hop: str | None = None) -> TransferError:
    """A refusal of the SSRF guard: final (no retry), naming the refused host, never a secret."""
    where = f"a redirect to {hop} " if hop else ""
    return TransferError(url, f"{where}refused by the SSRF guard: {exc.reason}", direction=direction)


class HttpBackend:
    def __init__(self, settings: TransferSettings, policy: EgressPolicy | None = None) -> None:
        self._credentials = settings.http
        self._chunk = settings.chunk_bytes
        self._follow = settings.follow_redirects
        self._policy = policy or EgressPolicy(settings)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            transport=guarded_transport(self._policy),
            trust_env=False,  # no proxies or .netrc from the environment (see the module doc)
        )

    async def _check_hop(self, url: str, target: httpx.URL) -> None:
        """Refuse a redirect target before anything is sent to it (the connection guard would too)."""
        port = target.port or {"http": 80, "https": 443}.get(target.scheme)
        if target.scheme not in ("http", "https") or port is None:
            raise TransferError(
                url, f"a redirect to a {target.scheme or '?'}:// URL is not followed", direction="download"
            )
        try:
            await self._policy.checked_addresses(target.host, port)
        except EgressDenied as exc:
            raise denied_error(url, exc, "download", hop=redact_url(str(target))) from None
        except Unresolvable:
            pass  # the connection reports it as a resolution failure (retryable)

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
                await self._check_hop(url, target)
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
        except EgressDenied as exc:
            raise denied_error(url, exc, "download") from None
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
            headers["Content-Length"] = str(src.stat().st_size)  # noqa: ASYNC240 - one stat of a local file
            headers.setdefault("Content-Type", "application/octet-stream")
            response = await self._client.put(
                target, content=self._chunks(src), headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT
            )
        except EgressDenied as exc:
            raise denied_error(url, exc, "upload") from None
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
