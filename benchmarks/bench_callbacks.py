"""Status callbacks: what the outbox costs the state changes, how fast it drains, how soon a callback
leaves (docs/callbacks.md, docs/benchmarks.md "Status callbacks").

    .venv/bin/python benchmarks/bench_callbacks.py [--tasks 2000] [--latency-samples 30]

On a temporary SQLite store (synchronous=FULL, the default) and a real local HTTP receiver (the
tests' stdlib ThreadingHTTPServer, verifying each signature), it prints:

1. store.update state changes per second, tasks without and with a callback_url (the latter also
   renders the BASIC view and inserts the outbox row in the same transaction), 100 concurrent
   callers so that group commit works as under load;
2. the drain rate of a full outbox (tasks x 2 events: QUEUED, INITIALIZING) by one delivery loop (callbacks.concurrency 16);
3. the latency from a state change to the receiver's arrival, with the loop idle (poll_interval 1 s,
   the default), p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.config.settings import Settings
from tesp_api.engine.callbacks import CallbackDelivery
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesState, TesTask
from tests.services.webhook_receiver import Receiver, webhook_receiver


def task(url: str | None) -> TesTask:
    return TesTask(
        id=new_task_id(),
        name="bench",
        executors=[TesExecutor(image="alpine", command=["sh", "-c", "echo hello"])],
        tags={"project": "bench"},
        callback_url=url,
    )


async def updates_per_second(store: SqliteTaskStore, url: str | None, n: int) -> float:
    ids = []
    for _ in range(n):
        record = await store.create(task(url), None)
        ids.append(record.id)
    started = time.perf_counter()
    for i in range(0, n, 100):
        await asyncio.gather(*(store.update(t, state=TesState.INITIALIZING) for t in ids[i : i + 100]))
    return n / (time.perf_counter() - started)


def settings_for(receiver: Receiver, tmp: Path, poll: float) -> Settings:
    return Settings.model_validate(
        {
            "callbacks": {
                "secret": receiver.secret,
                "allowed_prefixes": [receiver.url + "/"],
                "poll_interval": poll,
                "concurrency": 16,
            },
            "engine": {"work_dir": str(tmp)},
        }
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir, webhook_receiver() as receiver:
        tmp = Path(tmp_dir)
        store = SqliteTaskStore(str(tmp / "tasks.sqlite3"))
        await store.open()
        try:
            url = f"{receiver.url}/hooks"
            plain = await updates_per_second(store, None, args.tasks)
            with_cb = await updates_per_second(store, url, args.tasks)
            print(f"state changes/s, no callback_url: {plain:8.0f}")
            print(f"state changes/s, callback_url   : {with_cb:8.0f}  ({with_cb / plain:.2f}x)")
            # The outbox now holds QUEUED + INITIALIZING of each task with a callback_url.
            pending = await store.pending_callbacks()
            print(f"outbox: {pending} events")
            delivery = CallbackDelivery(settings_for(receiver, tmp, 0.05), store)
            started = time.perf_counter()
            await delivery.start()
            while await store.pending_callbacks():
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            await delivery.stop()
            verified = sum(d.verified for d in receiver.deliveries)
            print(
                f"drain: {pending} events in {elapsed:.2f} s = {pending / elapsed:.0f} events/s ({verified} verified)"
            )

            delivery = CallbackDelivery(settings_for(receiver, tmp, 1.0), store)
            await delivery.start()
            latencies = []
            for _ in range(args.latency_samples):
                record = await store.create(task(url), None)
                await asyncio.sleep(0.3)  # let the QUEUED one go first
                count = len(receiver.deliveries)
                changed = time.perf_counter()
                await store.update(record.id, state=TesState.CANCELED)
                while len(receiver.deliveries) <= count:
                    await asyncio.sleep(0.002)
                latencies.append(time.perf_counter() - changed)
            await delivery.stop()
            latencies.sort()
            p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
            print(
                f"latency change -> receiver (idle loop, poll_interval 1 s): p50 {statistics.median(latencies):.3f} s,"
                f" p95 {p95:.3f} s, max {latencies[-1]:.3f} s ({len(latencies)} samples)"
            )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
