"""ftp: RETR for inputs, STOR for outputs (parent directories made), via aioftp streams.

One control connection per file keeps the code simple and makes each retry start clean; FTP
servers handle that well, and the cost is small next to moving the data.
Credentials: from the URL (``ftp://user:pass@host/...``), else ``transfer.ftp`` for that host,
else anonymous.

SSRF guard (tesp_api/transfer/egress.py): the host is resolved and checked once, the control
connection goes to that checked address, and every data connection must go to the same address
(the address in a PASV answer is never trusted) on a port that is no control-plane endpoint.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import aioftp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from tesp_api.config.settings import TransferSettings
from tesp_api.transfer.base import part_file
from tesp_api.transfer.egress import EgressDenied, EgressPolicy, Unresolvable
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.file import os_reason
from tesp_api.transfer.urls import join_url


def ftp_error(url: str, exc: BaseException, direction: str) -> TransferError:
    """Map aioftp/OS failures to a reason that quotes no server text (it may echo a user name)."""
    if isinstance(exc, aioftp.StatusCodeError):
        codes = ",".join(str(c) for c in exc.received_codes)
        if any(str(c).startswith("530") for c in exc.received_codes):
            return TransferError(url, "login refused (wrong user name or password?)", direction=direction)
        if any(str(c).startswith("550") for c in exc.received_codes):
            return TransferError(url, f"not found or access denied (FTP {codes})", direction=direction)
        retryable = any(str(c).startswith("4") for c in exc.received_codes)
        return TransferError(url, f"server answered FTP {codes}", retryable=retryable, direction=direction)
    if isinstance(exc, EgressDenied):
        return TransferError(url, f"refused by the SSRF guard: {exc.reason}", direction=direction)
    if isinstance(exc, Unresolvable):
        host = urlsplit(url).hostname or "?"
        return TransferError(url, f"cannot resolve host name {host}", retryable=True, direction=direction)
    if isinstance(exc, TimeoutError):
        return TransferError(url, "timed out", retryable=True, direction=direction)
    if isinstance(exc, socket.gaierror):
        host = urlsplit(url).hostname or "?"
        return TransferError(url, f"cannot resolve host name {host}", retryable=True, direction=direction)
    if isinstance(exc, ConnectionError | OSError):
        host = urlsplit(url).hostname or "?"
        return TransferError(url, f"cannot connect to {host}", retryable=True, direction=direction)
    return TransferError(url, f"FTP problem ({type(exc).__name__})", retryable=True, direction=direction)


class GuardedFtpClient(aioftp.Client):
    """aioftp's client, connecting only to the address the egress policy checked."""

    def __init__(self, policy: EgressPolicy, **options: float) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._policy = policy
        self._peer: str | None = None

    async def connect_checked(self, host: str, port: int) -> None:
        addresses = await self._policy.checked_addresses(host, port)
        self._peer = addresses[0]
        await self.connect(self._peer, port)

    async def _open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._peer is None or host != self._peer:
            raise EgressDenied(f"an FTP connection to {host} was not checked")
        if self._stream is not None:  # a data connection: same address, the port must not be ours
            await self._policy.check_port_on(host, port)
        return await super()._open_connection(host, port)


class FtpBackend:
    def __init__(self, settings: TransferSettings, policy: EgressPolicy | None = None) -> None:
        self._credentials = settings.ftp
        self._chunk = settings.chunk_bytes
        self._timeout = settings.timeout
        self._policy = policy or EgressPolicy(settings)

    def _login(self, url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        if parts.username is not None:
            return unquote(parts.username), unquote(parts.password or "")
        host = (parts.hostname or "").lower()
        host_port = f"{host}:{parts.port}" if parts.port else host
        for cred in self._credentials:
            if cred.host.lower() in (host, host_port):
                return cred.username, cred.password.get_secret_value() if cred.password else ""
        return "anonymous", "anon@"

    @asynccontextmanager
    async def _session(self, url: str) -> AsyncIterator[aioftp.Client]:
        parts = urlsplit(url)
        client = GuardedFtpClient(
            self._policy,
            socket_timeout=self._timeout,
            connection_timeout=self._timeout,
            path_timeout=self._timeout,
        )
        try:
            await client.connect_checked(parts.hostname or "", parts.port or 21)
            user, password = self._login(url)
            await client.login(user, password)
            yield client
            await client.quit()
        finally:
            client.close()

    @staticmethod
    def _remote_path(url: str) -> str:
        return unquote(urlsplit(url).path)

    async def download_file(self, url: str, dest: Path) -> None:
        tmp = part_file(dest)
        try:
            async with self._session(url) as client:
                with await asyncio.to_thread(open, tmp, "wb") as out:
                    async with client.download_stream(self._remote_path(url)) as stream:
                        async for block in stream.iter_by_block(self._chunk):
                            await asyncio.to_thread(out.write, block)
            os.replace(tmp, dest)
        except TransferError:
            raise
        except OSError as exc:
            if exc.filename is not None or exc.errno in (28,):  # a local file problem, not the network
                raise TransferError(
                    url, f"cannot write the local copy: {os_reason(exc)}", direction="download"
                ) from None
            raise ftp_error(url, exc, "download") from None
        except Exception as exc:  # noqa: BLE001 - aioftp raises several unrelated types
            raise ftp_error(url, exc, "download") from None
        finally:
            tmp.unlink(missing_ok=True)

    async def list_directory(self, url: str) -> list[tuple[str, str]]:
        root = PurePosixPath(self._remote_path(url))
        found: list[tuple[str, str]] = []
        try:
            async with self._session(url) as client:
                if not await client.is_dir(root):
                    raise TransferError(url, "no such directory", direction="download")
                async for path, info in client.list(root, recursive=True):
                    if info.get("type") == "file":
                        rel = PurePosixPath(path).relative_to(root).as_posix()
                        found.append((rel, join_url(url.split("?", 1)[0], rel)))
        except TransferError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ftp_error(url, exc, "download") from None
        return sorted(found)

    async def upload_file(self, src: Path, url: str) -> None:
        remote = PurePosixPath(self._remote_path(url))
        try:
            fin = await asyncio.to_thread(open, src, "rb")  # closed below, after the session
        except OSError as exc:
            raise TransferError(
                url, f"cannot read the local file: {os_reason(exc)}", direction="upload"
            ) from None
        try:
            async with self._session(url) as client:
                if str(remote.parent) not in ("/", "."):
                    await self._make_parents(client, remote.parent)
                async with client.upload_stream(remote) as stream:
                    while block := await asyncio.to_thread(fin.read, self._chunk):
                        await stream.write(block)
        except Exception as exc:  # noqa: BLE001
            raise ftp_error(url, exc, "upload") from None
        finally:
            fin.close()

    @staticmethod
    async def _make_parents(client: aioftp.Client, directory: PurePosixPath) -> None:
        """MKD each missing level; "already exists" is fine (another upload of the same
        directory output may have made it a moment ago). A level made by someone else between
        our check and our MKD makes MKD fail: the rest is tried again, at most 3 times in all
        (tenacity, the transfer layer's one retry library; no wait: it is a race, not an outage)."""

        async def once() -> None:
            try:
                await client.make_directory(directory, parents=True)
            except aioftp.StatusCodeError:
                if await client.exists(directory) and await client.is_dir(directory):
                    return
                raise

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(aioftp.StatusCodeError), stop=stop_after_attempt(3), reraise=True
        ):
            with attempt:
                await once()

    async def aclose(self) -> None:
        return None
