"""Composition root: the one place that knows which concrete parts make up a running service.

``serve`` opens the store, builds the engine (if enabled) and the app, and runs uvicorn on exactly
the address the settings name. Everything else receives its collaborators as arguments.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import socket
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.config.settings import LoggingSettings, Settings
from tesp_api.log_context import JsonLogFormatter, LogContextFilter, TextLogFormatter
from tesp_api.metrics import instrument
from tesp_api.store.factory import open_store
from tesp_api.store.port import TaskStore

log = logging.getLogger(__name__)

T = TypeVar("T")


_CHATTY_LIBRARIES = ("httpx", "httpcore", "aio_pika", "aiormq", "botocore", "boto3", "s3transfer", "aioftp")


def configure_logging(conf: LoggingSettings) -> None:
    """Root logging from settings; uvicorn's loggers propagate to it (we pass log_config=None).

    Every line carries the task, worker and Pulsar server it is about, where known
    (tesp_api/log_context.py, docs/logging.md)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonLogFormatter() if conf.output_json else TextLogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(conf.level)
    # Our formatters never show the caller, thread or process: skip finding them for every record
    # (a stack walk and three lookups, ~10 % of a log line; issue 15).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Client libraries log every request at INFO (one line per Pulsar status poll); keep them for DEBUG.
    quiet = logging.DEBUG if conf.level == "DEBUG" else logging.WARNING
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)


class StartupError(Exception):
    """The service cannot start; the message says why (no secrets), for the command line."""


async def build_store(settings: Settings) -> TaskStore:
    """The opened task store the settings ask for (SQLite by default, MongoDB with db.mongodb_uri)."""
    try:
        # Counted creates and finishes for /metrics (tesp_api/metrics.py)
        return instrument(await open_store(settings))  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - whatever stops the store opening stops the start, with its reason
        reason = f"{type(exc).__name__}: {exc}"
        uri = settings.db.mongodb_uri.get_secret_value() if settings.db.mongodb_uri else ""
        if uri:
            reason = reason.replace(uri, "<db.mongodb_uri>")
        raise StartupError(f"cannot open the task store ({reason})") from None


def build_engine(settings: Settings, store: TaskStore) -> Any | None:
    """The task engine run inside this process, or None.

    Filled in by the engine: it returns ``tesp_api.engine.Engine(settings, store, backends, ...)``
    (with ``start()``, ``stop()``, ``notify_cancel(task_id)``) when ``engine.enabled`` is true.
    """
    if not settings.engine.enabled:
        return None
    from tesp_api.engine import Engine

    return Engine(settings, store)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _engine_lifespan(engine: Any | None, loops: Any | None = None) -> Any:
    """Starts the engine when the app starts serving and stops it before the app shuts down;
    ``loops`` (callback delivery, retention: engine/background.py) run beside it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            await _maybe_await(engine.start())
            log.info("engine started")
        if loops is not None:
            await loops.start()
        try:
            yield
        finally:
            if loops is not None:
                await loops.stop()
            if engine is not None:
                await _maybe_await(engine.stop())
                log.info("engine stopped")

    return lifespan


def _background_loops(settings: Settings, store: TaskStore, engine: Any | None) -> Any | None:
    """Callback delivery and the retention sweep, where the engine runs (docs/callbacks.md)."""
    if engine is None:
        return None
    from tesp_api.engine.background import BackgroundLoops

    return BackgroundLoops(settings, store, worker_id=getattr(engine, "worker_id", None))


_BUILD: Any = object()  # running_app's default: build the engine from the settings


@asynccontextmanager
async def running_app(settings: Settings, *, engine: Any | None = _BUILD) -> AsyncIterator[FastAPI]:
    """The whole service as an ASGI app: store opened here, engine run by the app's lifespan.
    ``engine`` given: that object (None, or another process's wake-up channel) is what the routes
    notify, and it is not started here."""
    store = await build_store(settings)
    try:
        if engine is _BUILD:
            engine = build_engine(settings, store)
            lifespan = _engine_lifespan(engine, _background_loops(settings, store, engine))
        else:
            lifespan = _engine_lifespan(None)
        yield create_app(
            settings,
            store,
            engine=engine,
            lifespan=lifespan,
        )
    finally:
        await store.close()


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn options of every serve mode (benchmarks/bench_api.py serves its bare app with them)."""
    return uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        proxy_headers=True,
        forwarded_allow_ips=settings.api.forwarded_allow_ips,
        log_config=None,
        lifespan="on",
        server_header=False,
        access_log=settings.api.access_log,
    )


# The youngest generation is collected every this many new container objects (Python: 700).
GC_YOUNG_THRESHOLD = 7000


def tune_gc_for_serving() -> None:
    """Two garbage-collector settings for a serving process (issue 15; docs/benchmarks.md, "What
    changed for create"), both because a create's objects live until its group commit, so with
    dozens of creates in flight they are many, and live long enough to be collected again and again:

    * ``gc.freeze`` (after one collection, so no garbage is kept for ever) of what is alive once
      the app is built: the imported modules, the app, its routes and pydantic validators, ~100,000
      objects that live as long as the process anyway. The objects of the creates reach the oldest
      generation, whose collections walk every tracked object: ~15 % of a create's CPU before.
    * the youngest generation collected every ``GC_YOUNG_THRESHOLD`` allocations instead of 700:
      each of its collections walks every live young object, i.e. all the creates in flight, and
      came once or twice per request; ~10 % of a create's CPU. Cycles are freed a little later,
      a few thousand objects at most.

    Neither changes what is freed, only when. (A bare endpoint gains nothing from the freeze:
    its requests' objects die young.)"""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve_async(
    settings: Settings, *, sock: socket.socket | None = None, engine: Any | None = _BUILD
) -> None:
    """Serve the API until SIGINT/SIGTERM. ``sock``: a listening socket shared with other API
    processes (api.workers); ``engine``: what the routes notify instead of an in-process engine."""
    async with running_app(settings, engine=engine) as app:
        server = uvicorn.Server(uvicorn_config(app, settings))
        tune_gc_for_serving()
        await server.serve(sockets=[sock] if sock is not None else None)


def run_on_uvicorn_loop(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``asyncio.run(main)`` on the event loop uvicorn itself picks in ``uvicorn.Server.run``:
    uvloop, which ``uvicorn[standard]`` installs, else asyncio's own. serve_async runs uvicorn
    through ``Server.serve``, which leaves the loop to its caller, so with a plain ``asyncio.run``
    the service ran on asyncio's pure-Python loop while any app started by uvicorn itself (the
    benchmark's bare endpoint) ran on uvloop (issue 15; docs/benchmarks.md, "What changed for
    create")."""
    with asyncio.Runner(loop_factory=uvicorn_config(None, settings).get_loop_factory()) as runner:
        return runner.run(main)


def serve(settings: Settings) -> int:
    """Run the service until SIGINT/SIGTERM (``tesp-api serve``): one process (api.workers = 0) or
    api.workers API processes and an engine process (tesp_api/workers.py). The exit code."""
    if settings.api.workers == 0:
        run_on_uvicorn_loop(serve_async(settings), settings)
        return 0
    from tesp_api.workers import serve_processes

    return serve_processes(settings)
