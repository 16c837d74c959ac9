"""The RabbitMQ broker on 127.0.0.1:5672, as the AMQP tests need it.

The broker is shared by the whole machine (other engineers' tests, other sessions), so this module never
reconfigures it: tests isolate themselves with a unique queue prefix (Pulsar's ``amqp_key_prefix``) and
delete their queues afterwards. :func:`ensure_running` starts the broker when it is down, the way
/work/shared/notes/rabbitmq.md describes; :func:`restart_app` stops and starts the RabbitMQ application
inside the running node (``rabbitmqctl stop_app`` / ``start_app``): durable queues and persistent messages
survive it, clients are disconnected, and the node is always started again, even when stopping fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

HOST = "127.0.0.1"
PORT = 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def is_listening(host: str = HOST, port: int = PORT, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout, check=False)


def wait_until_listening(deadline_seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if is_listening():
            return True
        time.sleep(0.2)
    return False


def ensure_running() -> bool:
    """True when the broker accepts connections (starting it first if it is down and we can)."""
    if is_listening():
        return True
    if not Path(RABBITMQCTL).exists():
        return False
    # The node may exist with the app stopped (e.g. an interrupted restart test): start the app.
    if _ctl("start_app").returncode == 0 and wait_until_listening(30):
        return True
    _start_node()
    return wait_until_listening(60)


def _start_node() -> None:
    """Start a node as /work/shared/notes/rabbitmq.md says (root: the rabbitmq-server script, own state)."""
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not Path(server).exists():
        server = shutil.which("rabbitmq-server") or server
    base = Path(os.environ.get("TESP_RABBITMQ_DIR", "/tmp/tesp-rabbitmq"))
    (base / "home").mkdir(parents=True, exist_ok=True)
    conf = base / "rabbitmq.conf"
    if not conf.exists():
        conf.write_text(f"listeners.tcp.1 = {HOST}:{PORT}\n")
    env = dict(os.environ)
    env.update(
        HOME=str(base / "home"),
        RABBITMQ_NODENAME="rabbit@localhost",
        RABBITMQ_NODE_IP_ADDRESS=HOST,
        RABBITMQ_NODE_PORT=str(PORT),
        ERL_EPMD_ADDRESS=HOST,
        RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(base / "log"),
        RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
    )
    subprocess.run([server, "-detached"], env=env, check=False, timeout=60)
    subprocess.run([RABBITMQCTL, "await_startup"], env=env, check=False, timeout=60, capture_output=True)


def restart_app() -> None:
    """Stop and start the broker application; returns once it accepts connections again.

    The ``finally`` guarantees the broker is started again whatever happens in between: it is shared.
    """
    try:
        stopped = _ctl("stop_app")
        if stopped.returncode != 0:
            raise RuntimeError(f"rabbitmqctl stop_app failed: {stopped.stderr.strip()}")
    finally:
        started = _ctl("start_app")
        if started.returncode != 0 or not wait_until_listening(60):
            ensure_running()
    _ctl("await_startup")


def unique_prefix(tag: str = "t") -> str:
    """A queue-name prefix no other test or process uses (Pulsar appends ``_setup`` etc.)."""
    return f"tesp_test_{tag}_{uuid.uuid4().hex[:10]}_"


async def delete_queues(names: list[str], url: str = URL) -> None:
    """Remove the durable queues a test created, so the shared broker does not accumulate them."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):  # already gone is fine; each name gets a fresh channel
                await channel.queue_delete(name)
    finally:
        await connection.close()


def require_broker() -> None:
    """Skip the calling test, saying why, when no broker runs on 127.0.0.1:5672 and none can be started."""
    import pytest

    if not ensure_running():
        pytest.skip("no RabbitMQ broker on 127.0.0.1:5672 and it cannot be started here")
