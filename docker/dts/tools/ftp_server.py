"""A small FTP server for data-transfer tests of tesp-api (the `dts-ftp` service), on pyftpdlib.

One user with read/write rights in its home directory. Passive data ports come from a fixed range
so that they can be published; EPSV (what curl and aioftp try first) answers with the port only, so
a client reaching the control port through a published port reaches the data ports the same way.

Environment: DTS_FTP_USER, DTS_FTP_PASSWORD (both required), DTS_FTP_ROOT (default /data),
DTS_FTP_PORT (2121), DTS_FTP_PASSIVE_PORTS ("30000-30009"), DTS_FTP_MASQUERADE (address to
announce in PASV answers; default: the container's own), DTS_FTP_AUTH_FAILED_DELAY (seconds before
answering a wrong password, default 3: slows down password guessing).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

log = logging.getLogger("dts-ftp")


def passive_range(text: str) -> range:
    low, _, high = text.partition("-")
    first, last = int(low), int(high or low)
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"bad passive port range: {text!r}")
    return range(first, last + 1)


def build_server(
    root: Path,
    user: str,
    password: str,
    host: str,
    port: int,
    passive: range,
    masquerade: str | None,
    auth_failed_delay: float = 3.0,
) -> FTPServer:
    authorizer = DummyAuthorizer()
    # e l r: list and read; a d f m w M T: write, delete, rename, mkdir, store, chmod, mtime.
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")

    class DtsFtpHandler(FTPHandler):  # pyftpdlib configures handlers through class attributes
        pass

    DtsFtpHandler.authorizer = authorizer
    DtsFtpHandler.passive_ports = list(passive)
    DtsFtpHandler.masquerade_address = masquerade
    DtsFtpHandler.auth_failed_timeout = auth_failed_delay
    return FTPServer((host, port), DtsFtpHandler)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    user = os.environ.get("DTS_FTP_USER", "")
    password = os.environ.get("DTS_FTP_PASSWORD", "")
    if not user or not password:
        log.error("DTS_FTP_USER and DTS_FTP_PASSWORD must be set (docker/dts/.env)")
        return 64
    root = Path(os.environ.get("DTS_FTP_ROOT", "/data"))
    root.mkdir(parents=True, exist_ok=True)
    server = build_server(
        root,
        user,
        password,
        os.environ.get("DTS_FTP_HOST", "0.0.0.0"),  # a container: listen on all its addresses
        int(os.environ.get("DTS_FTP_PORT", "2121")),
        passive_range(os.environ.get("DTS_FTP_PASSIVE_PORTS", "30000-30009")),
        os.environ.get("DTS_FTP_MASQUERADE") or None,
        float(os.environ.get("DTS_FTP_AUTH_FAILED_DELAY", "3")),
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
