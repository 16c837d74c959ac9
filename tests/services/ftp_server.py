"""A real FTP server for tests: pyftpdlib in a subprocess, one user with a home directory.

It listens on 127.0.0.1 (free port chosen by the OS, printed on its first stdout line) and is
stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services.s3_server import stop, wait_listening

USER = "tesuser"
PASSWORD = "ftp-pa55word-never-logged"

_SERVER = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
root, user, password = sys.argv[1:4]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = FTPHandler
handler.authorizer = authorizer
handler.masquerade_address = None
handler.passive_ports = None
handler.auth_failed_timeout = 0  # no 3 s penalty per failed login: tests try wrong passwords on purpose
server = FTPServer(("127.0.0.1", 0), handler)
print(server.address[1], flush=True)
server.serve_forever(timeout=0.5)
"""


@dataclass(frozen=True)
class FtpServer:
    host: str
    port: int
    root: Path
    user: str = USER
    password: str = PASSWORD

    def url(self, path: str, *, with_login: bool = True) -> str:
        login = f"{self.user}:{self.password}@" if with_login else ""
        return f"ftp://{login}{self.host}:{self.port}/{path.lstrip('/')}"


@contextlib.contextmanager
def ftp_server(root: Path) -> Iterator[FtpServer]:
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(root), USER, PASSWORD],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().decode().strip())
        wait_listening(port, process)
        yield FtpServer("127.0.0.1", port, root)
    finally:
        stop(process)
