"""``tesp-api serve`` with ``api.workers = N >= 1``: N API processes and one engine process.

Why: one Python process runs on one core, and an engine polling hundreds of running tasks took half
of it from the API (issue 15). Here the parent holds the port and forks:

* N API processes, each a uvicorn server on its own SO_REUSEPORT socket on that port (the kernel
  spreads the connections by hash; see _listen), each with its own store connection (SQLite: WAL,
  one writer at a time across processes, as with ``tesp-api worker`` replicas, their writers taking
  turns through store/sqlite/writer_queue.py; MongoDB: its own client), and no engine;
* one engine process (when ``engine.enabled``), the same engine as ``tesp-api worker``.

The in-process shortcuts (a create claimed at once, a cancel noticed at once) cross the process
boundary as one datagram on a Unix socket in a private directory (mode 0700): ``created <id>`` or
``cancel <id>``. Sending never blocks and a lost datagram only costs latency, because the engine
still finds every task in the store (claim_interval) and every cancel (its periodic re-read).
Decision and measurements: docs/benchmarks.md ("API processes").

The parent only supervises: SIGTERM/SIGINT is passed on to every child, which shuts down cleanly
(uvicorn finishes its requests, the engine stops its drivers); a child that dies takes the service
down (exit 1) rather than leaving it half alive. Children die with the parent (PR_SET_PDEATHSIG),
so a killed parent leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tesp_api import metrics
from tesp_api.config.settings import Settings

log = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (no orphaned workers). Its own process
    group, so a Ctrl-C reaches only the parent, which passes one SIGTERM on (a second signal would
    make uvicorn drop its open requests).

    SIGTERM and SIGINT go back to their default action first: a forked child inherits the parent's
    Python handler (``stop``, which only sets the parent's flag), so a parent-death SIGTERM that came
    before uvicorn or the engine set their own handlers was swallowed and the child lived on as an
    orphan (seen twice: ``test_children_die_with_a_killed_serve_process``)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before prctl above: no signal would ever come (seen once in CI)


class EngineWakeups:
    """What an API process's routes call instead of an in-process engine: one datagram each."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _send(self, word: str, task_id: str) -> None:
        try:
            self._sock.sendto(f"{word} {task_id}".encode(), self._path)
        except OSError:  # engine busy (queue full) or restarting: it finds the task in the store
            pass

    def notify_created(self, task_id: str) -> None:
        self._send("created", task_id)

    def notify_cancel(self, task_id: str) -> None:
        self._send("cancel", task_id)


def _wakeup_listener(path: str, engine: Any) -> socket.socket:
    """Bind the engine's datagram socket and hand each message to the engine's notify hook."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = (
        set()
    )  # a reference to each hook still running (else it may be collected)

    def readable() -> None:
        while True:
            try:
                data = sock.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            word, _, task_id = data.decode("utf-8", "replace").partition(" ")
            hook = {"created": "notify_created", "cancel": "notify_cancel"}.get(word)
            method = getattr(engine, hook, None) if hook else None
            if method is None or not task_id:
                continue
            try:
                result = method(task_id)
                if asyncio.iscoroutine(result):
                    task = loop.create_task(result)
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            except Exception:
                log.exception("engine %s(%s) failed", hook, task_id)

    loop.add_reader(sock.fileno(), readable)
    return sock


async def _run_engine(settings: Settings, wake_path: str) -> None:
    from tesp_api.engine import Engine
    from tesp_api.service import build_store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    store = await build_store(settings)
    engine = Engine(settings, store)
    from tesp_api.engine.background import BackgroundLoops

    loops = BackgroundLoops(settings, store, worker_id=engine.worker_id)  # callbacks, retention
    listener = None
    try:
        await engine.start()
        await loops.start()
        listener = _wakeup_listener(wake_path, engine)
        log.info("engine process started (worker %s)", engine.worker_id)
        await stop.wait()
    finally:
        if listener is not None:
            loop.remove_reader(listener.fileno())
            listener.close()
        await loops.stop()
        await engine.stop()
        await store.close()
        log.info("engine process stopped")


def _engine_child(settings: Settings, wake_path: str) -> None:
    _die_with_parent()
    metrics.process_started("engine")
    from tesp_api.service import configure_logging

    configure_logging(settings.logging)
    asyncio.run(_run_engine(settings, wake_path))


def _api_child(settings: Settings, port: int, wake_path: str | None) -> None:
    _die_with_parent()
    metrics.process_started("api")
    from tesp_api.service import StartupError, configure_logging, run_on_uvicorn_loop, serve_async

    configure_logging(settings.logging)
    engine = EngineWakeups(wake_path) if wake_path is not None else None
    sock = _listen(settings.api.host, port)
    try:
        run_on_uvicorn_loop(serve_async(settings, sock=sock, engine=engine), settings)
    except StartupError as exc:
        print(f"tesp-api: {exc}", file=sys.stderr)
        sys.exit(2)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; without it every answer (headers, then body) waited for a delayed ACK
    # (measured: half the throughput of the one-process server).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _listen(host: str, port: int) -> socket.socket:
    """A child's own listening socket on the shared port. SO_REUSEPORT, not one inherited socket:
    with one socket every process waits on, the busiest one kept accepting (measured: 52 against 8
    CPU ticks of two processes); with a socket each, the kernel spreads connections by hash. Only
    processes of the same user can join the port."""
    sock = _reuseport_socket(host, port)
    sock.listen(2048)
    return sock


def serve_processes(settings: Settings) -> int:
    """Run api.workers API processes and the engine process until SIGINT/SIGTERM; the exit code."""
    ctx = multiprocessing.get_context("fork")  # before any thread or event loop exists in this process
    # Bound, never listening: holds the port (and picks one for port 0) while each child listens on
    # its own SO_REUSEPORT socket; a socket that does not listen is given no connections.
    sock = _reuseport_socket(settings.api.host, settings.api.port)
    port = sock.getsockname()[1]
    private = Path(tempfile.mkdtemp(prefix="tesp-api-wake-"))  # 0700
    # Prometheus multiprocess mode (docs/metrics.md): each child writes its metrics to its own
    # files here, any API process answers /metrics with the sum; removed with `private` at the end.
    (private / "metrics").mkdir(mode=0o700)
    metrics.use_multiprocess_dir(str(private / "metrics"))
    wake_path = str(private / "engine.sock") if settings.engine.enabled else None
    api_settings = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"enabled": False})}
    )
    children: list[Any] = []
    if wake_path is not None:
        children.append(ctx.Process(target=_engine_child, args=(settings, wake_path), name="tesp-api-engine"))
    children.extend(
        ctx.Process(target=_api_child, args=(api_settings, port, wake_path), name=f"tesp-api-api-{i}")
        for i in range(settings.api.workers)
    )
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for child in children:
            child.start()
        log.info(
            "serving on http://%s:%d with %d API processes%s",
            settings.api.host,
            port,
            settings.api.workers,
            " and an engine process" if wake_path else " (engine disabled)",
        )
        while not stopping:
            ended = multiprocessing.connection.wait([c.sentinel for c in children], timeout=0.5)
            if ended:
                dead = [c for c in children if c.sentinel in ended]
                for child in dead:
                    # its sentinel (a pipe) closes as it exits, a moment before it can be reaped:
                    # is_alive() could still say True (then nothing was logged nor marked dead)
                    child.join(5)
                    if child.pid is not None:
                        metrics.process_ended(child.pid)  # its live gauges leave the sums
                    log.error(
                        "%s (pid %s) exited with %s: stopping the service",
                        child.name,
                        child.pid,
                        child.exitcode,
                    )
                code = 2 if any(c.exitcode == 2 for c in dead) else 1
                break
    finally:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for child in children:
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                log.warning("%s did not stop in %gs: killed", child.name, _STOP_GRACE_SECONDS)
                child.kill()
                child.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        shutil.rmtree(private, ignore_errors=True)
    return code
