"""`tesp-api worker`: the engine alone, without the HTTP API, on the same store as the API.

Any number of workers (and `tesp-api serve` replicas with the engine on) may share one store:
leases make sure each task is driven by one of them at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from tesp_api.config.settings import Settings

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    from tesp_api.engine.background import BackgroundLoops
    from tesp_api.engine.engine import Engine
    from tesp_api.store.factory import open_store

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    store = await open_store(settings)
    engine = Engine(settings, store)
    loops = BackgroundLoops(settings, store, worker_id=engine.worker_id)  # callbacks, retention
    try:
        await engine.start()
        await loops.start()
        log.info("worker %s started", engine.worker_id)
        await stop.wait()
    finally:
        await loops.stop()
        await engine.stop()
        await store.close()
        log.info("worker %s stopped", engine.worker_id)


def main(settings: Settings) -> int:
    asyncio.run(run_worker(settings))
    return 0
