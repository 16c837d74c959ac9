"""Long S3 transfers never starve the rest of the service of threads.

A whole S3 transfer holds one thread from start to end. In the default executor, a handful of them
held every thread ``asyncio.to_thread`` hands out (file work, DNS lookups), so logins and staging
stalled. S3 transfers now run in a bounded pool of their own (transfer/s3.py), and Basic auth's
scrypt in another (auth/basic.py).

The long transfers go to a stalled S3 endpoint: a real socket on 127.0.0.1 that accepts
connections and never answers (what an overloaded endpoint looks like; moto answers too fast to
hold a thread for long). Each transfer then holds its thread until ``transfer.timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesp_api.auth.authenticator import build_authenticator
from tesp_api.auth.passwords import hash_password
from tesp_api.config.settings import S3Credential, Settings
from tesp_api.transfer.mux import TransferError, TransferMux
from tests.services.s3_server import S3Server
from tests.transfer.conftest import BUCKET, make_settings

# More transfers than the default executor has threads (min(32, cpus + 4)).
TRANSFERS = min(32, (os.cpu_count() or 1) + 4) + 4


class StalledEndpoint:
    """Accepts TCP connections on 127.0.0.1 and never answers; counts what it accepted."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self._sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def stalled() -> Iterator[StalledEndpoint]:
    endpoint = StalledEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


async def test_a_login_completes_while_long_s3_transfers_run(
    s3: S3Server, stalled: StalledEndpoint, work_dir: Path
) -> None:
    cred = S3Credential(
        endpoint_url=f"http://127.0.0.1:{stalled.port}",
        region=s3.region,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
    )
    mux = TransferMux(make_settings(retries=0, timeout=10.0).model_copy(update={"s3": [cred]}))
    users = [{"username": "alice", "password_hash": hash_password("alice-pw")}]  # the real scrypt cost
    auth = build_authenticator(Settings.model_validate({"auth": {"mode": "basic", "users": users}}))
    transfers = [
        asyncio.create_task(mux.download(f"s3://{BUCKET}/big-{i}", work_dir / f"big-{i}"))
        for i in range(TRANSFERS)
    ]
    try:
        while len(stalled.accepted) < TRANSFERS:  # every transfer holds its thread now
            assert not any(t.done() for t in transfers), [t.exception() for t in transfers if t.done()]
            await asyncio.sleep(0.05)
        await asyncio.to_thread(lambda: None)  # the default executor still has a thread
        header = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
        principal = await auth.authenticate(header)
        assert principal.owner.subject == "alice"
        assert not any(t.done() for t in transfers), "the transfers ended before the login did"
    finally:
        results = await asyncio.gather(*transfers, return_exceptions=True)
        await mux.aclose()
        await auth.aclose()
    assert all(isinstance(r, TransferError) for r in results), results
