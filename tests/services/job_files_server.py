"""Galaxy's job files endpoint as Pulsar's own tests run it: simple-job-files' JobFilesApp over HTTP.

Pulsar with remote staging (``default_file_action: remote_transfer``) GETs each input from
``files_endpoint?path=<client path>`` and POSTs each output back there as multipart field ``file``.
Galaxy serves that endpoint in production; Pulsar's integration tests serve it with JobFilesApp, and
so do we. The app only reads and writes paths under ``root`` (its own ``in_directory`` check). The
server is a stdlib WSGI server in a thread on 127.0.0.1 and a free port, shut down on exit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from simplejobfiles.app import JobFilesApp


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class JobFilesServer:
    """Where the job files endpoint listens and what it has served (for assertions)."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app

    @property
    def served_files(self) -> list[str]:
        """Paths of the inputs Pulsar downloaded, in order."""
        return list(self.app.served_files)


@contextmanager
def job_files_server(root: Path) -> Iterator[JobFilesServer]:
    app = JobFilesApp(str(root), allow_multiple_downloads=True)  # type: ignore[no-untyped-call]
    httpd = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="job-files-server", daemon=True)
    thread.start()
    try:
        yield JobFilesServer(f"http://127.0.0.1:{port}/", app)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
