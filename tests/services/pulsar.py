"""A real Pulsar REST server (pulsar-serve from pulsar-app) for tests, on 127.0.0.1 and a free port.

State (staging, persistence, HOME for gunicorn) lives in a temporary directory; ``stop`` kills the
server's whole process group by PID, gunicorn workers included. The launcher itself is
``tesp_api.local.LocalPulsar``, the one `tesp-api local` uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tesp_api.local import LocalPulsar

__all__ = ["LocalPulsar", "pulsar_server"]


@contextmanager
def pulsar_server(
    state_dir: Path,
    *,
    private_token: str | None = None,
    num_concurrent_jobs: int = 4,
    exec_job_scripts: bool = False,
) -> Iterator[LocalPulsar]:
    """A started LocalPulsar, stopped on exit. ``exec_job_scripts``: Pulsar's own pulsar-serve, which
    execs each job's command.sh (tesp_api/pulsar/serve.py says why ours does not)."""
    server = LocalPulsar(
        state_dir,
        private_token=private_token,
        num_concurrent_jobs=num_concurrent_jobs,
        exec_job_scripts=exec_job_scripts,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=3.0)  # test state is thrown away: no need for a long graceful stop
