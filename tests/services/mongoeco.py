"""A MongoDB wire-protocol server for tests: the ``mongoeco`` emulator, run as a sidecar process.

There is no mongod on the build machines and none can be installed offline, so the MongoDB store
is tested against mongoeco (a MongoDB emulator in Python that speaks the real wire protocol, so
PyMongo talks to it over TCP exactly as to mongod). mongoeco needs Python >= 3.13 while the
project runs on 3.11, hence a separate virtualenv (``<repo>/.venv-mongoeco``, gitignored) that this
launcher creates on first use. With ``TESP_TEST_MONGODB_URI`` set, that real server is used instead.

The server binds 127.0.0.1 on a port the OS picks and reports it on stdout; it is stopped by PID.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-mongoeco"
URI_ENV_VAR = "TESP_TEST_MONGODB_URI"
START_TIMEOUT = 60.0

_SERVER_SCRIPT = r"""
import asyncio, sys
from mongoeco.engines.memory import MemoryEngine
from mongoeco.wire import AsyncMongoEcoProxyServer

async def main() -> None:
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=0)
    address = await server.start()
    print(f"PORT {address.port}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class MongoUnavailable(RuntimeError):
    """Neither a real MongoDB nor the mongoeco emulator can be used here."""


def _python313() -> str | None:
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13.*/bin/python")), reverse=True)
    candidates += [p for p in (shutil.which("python3.13"),) if p]
    return candidates[0] if candidates else None


def venv_python() -> Path:
    """The Python of the mongoeco virtualenv, creating the virtualenv when it is missing."""
    python = VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import mongoeco.wire, bson"], check=False, capture_output=True, timeout=60
        )
        if check.returncode == 0:
            return python
    base = _python313()
    if base is None:
        raise MongoUnavailable("mongoeco needs Python >= 3.13 and none was found (~/.pyenv/versions/3.13.*)")
    try:
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            # pymongo provides the `bson` package mongoeco's wire server needs (it is not a declared
            # dependency of mongoeco: without it every command fails to decode and the connection closes).
            [str(python), "-m", "pip", "install", "-q", "mongoeco", "pymongo>=4.13"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise MongoUnavailable(
            f"cannot install mongoeco into {VENV}: {detail.decode(errors='replace')[-500:]}"
        ) from exc
    return python


def _wait_for_port(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("PORT "):
            return int(line.split()[1])
        if not line and process.poll() is not None:
            break
    raise MongoUnavailable(f"the mongoeco server did not start (exit code {process.poll()})")


@contextmanager
def mongoeco_server() -> Iterator[str]:
    """Run the mongoeco wire server; yield its mongodb:// URI; stop it by PID."""
    python = venv_python()
    process = subprocess.Popen(
        [str(python), "-c", _SERVER_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(REPO),
    )
    try:
        port = _wait_for_port(process)
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=10000"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def mongodb_server() -> Iterator[str]:
    """A MongoDB URI for tests: TESP_TEST_MONGODB_URI when set, else a mongoeco sidecar.

    Raises MongoUnavailable when neither works (the fixture turns that into a skip with the reason).
    """
    real = os.environ.get(URI_ENV_VAR)
    if real:
        yield real
        return
    with mongoeco_server() as uri:
        yield uri


if __name__ == "__main__":  # manual use: python -m tests.services.mongoeco
    with mongoeco_server() as server_uri:
        print(server_uri, file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
