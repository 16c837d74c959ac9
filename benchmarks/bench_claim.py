"""Fair claiming (docs/quotas.md, docs/benchmarks.md "Fair claim"): claim throughput and how soon a
newly active user's first task is claimed, with a backlog of queued tasks from 1 or 100 owners.

    .venv/bin/python benchmarks/bench_claim.py [--tasks 50000] [--claims 2000] [--no-mongo]

For each store (SQLite on a temporary file; MongoDB through the mongoeco emulator, labelled so, or
TESP_TEST_MONGODB_URI) and each owner count, it queues ``--tasks`` tasks (round robin over the
owners), then prints:

1. claims per second for ``--claims`` claims from a small queue (1,000 tasks) and from the full one,
   one claim at a time (the engine's claim loop), with a policy as the engine gives it (per-owner
   limit, two servers with a route callback): the fair claim must not get slower as the queue grows;
2. for a user who was not in the backlog: the claims that went to others between its first task's
   create and its claim, and the time from that create to its claim (no claim interval is waited
   here: in the engine add at most one ``engine.claim_interval``, as the create wakes the loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.store.port import ClaimPolicy, Owner, TaskRecord, TaskStore
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesExecutor, TesTask

LEASE = timedelta(minutes=30)
FSYNC = "--fsync" in sys.argv


def task() -> TesTask:
    return TesTask(
        id=str(uuid.uuid4()), name="bench", executors=[TesExecutor(image="alpine", command=["true"])]
    )


def route(record: TaskRecord, loads: Mapping[str, int]) -> Sequence[str]:
    return sorted(("east", "west"), key=lambda n: loads.get(n, 0))


POLICY = ClaimPolicy(max_active_per_owner=1_000_000, route=route)


async def fill(store: TaskStore, n: int, owners: int, batch: int) -> None:
    people = [Owner(f"user{i}", "bench") for i in range(owners)]
    for start in range(0, n, batch):
        await asyncio.gather(
            *(store.create(task(), people[i % owners]) for i in range(start, min(n, start + batch)))
        )


async def filled(make: Callable[[], Opener], n: int, owners: int, batch: int) -> TaskStore:
    """A store with ``n`` queued tasks, closed and opened again after the bulk load (SQLite: the
    load's write-ahead log is checkpointed then, not by the first claims being measured)."""
    opener = make()
    store = opener()
    await store.open()
    await fill(store, n, owners, batch)
    await store.close()
    again = opener()
    await again.open()
    return again


async def claims_per_second(store: TaskStore, claims: int, rounds: int = 3) -> float:
    """The best of ``rounds`` rounds of claims/rounds claims each (the build machine is shared)."""
    now = datetime.now(UTC)
    best = 0.0
    per_round = max(1, claims // rounds)
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            if await store.claim("bench", now, now + LEASE, policy=POLICY) is None:
                raise RuntimeError("nothing left to claim")
        best = max(best, per_round / (time.perf_counter() - started))
    return best


async def newcomer(store: TaskStore) -> tuple[int, float]:
    first = await store.create(task(), Owner("newcomer", "bench"))
    created = time.perf_counter()
    now = datetime.now(UTC)
    others = 0
    while True:
        record = await store.claim("bench", now, now + LEASE, policy=POLICY)
        if record is None:
            raise RuntimeError("the newcomer's task was never claimed")
        if record.id == first.id:
            return others, time.perf_counter() - created
        others += 1


# A maker gives, per call, an opener of a fresh database (each call of the opener: a new adapter on it).
Opener = Callable[[], TaskStore]


@contextmanager
def sqlite_maker() -> Iterator[Callable[[], Opener]]:
    with tempfile.TemporaryDirectory() as tmp:
        names = (str(Path(tmp) / f"bench{i}.sqlite3") for i in range(1_000_000))

        def new_db() -> Opener:
            path = next(names)
            # synchronous=NORMAL: with FULL every claim's commit also waits for one fsync, which
            # measures the disk, not the claim (run with --fsync to include it).
            return lambda: SqliteTaskStore(path, synchronous="FULL" if FSYNC else "NORMAL")

        yield new_db


@contextmanager
def mongo_maker() -> Iterator[Callable[[], Opener]]:
    from tesp_api.store.mongo import MongoTaskStore
    from tests.services.mongoeco import mongodb_server

    with mongodb_server() as uri:

        def new_db() -> Opener:
            database = f"bench_{uuid.uuid4().hex[:8]}"
            return lambda: MongoTaskStore(uri, database=database)

        yield new_db


async def run_store(
    label: str, make: Callable[[], Opener], tasks: int, claims: int, batch: int
) -> list[tuple[str, int, int, float, float, int, float]]:
    rows = []
    for owners in (1, 100):
        small_store = await filled(make, min(1000 + claims, tasks), owners, batch)
        small = await claims_per_second(small_store, claims)
        await small_store.close()
        started = time.perf_counter()
        store = await filled(make, tasks, owners, batch)
        print(
            f"  {label}: {tasks} tasks of {owners} owner(s) queued in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        full = await claims_per_second(store, claims)
        others, seconds = await newcomer(store)
        await store.close()
        rows.append((label, owners, tasks, small, full, others, seconds))
        print(
            f"  {label}, {owners} owners: {small:.0f} claims/s (1k queued), {full:.0f} claims/s ({tasks} queued); "
            f"newcomer claimed after {others} other claim(s), {seconds * 1000:.1f} ms",
            flush=True,
        )
    return rows


async def sqlite_claim_cost(tasks: int, claims: int) -> None:
    """The claim's own work on SQLite, without the store's threads and commit wait: the claim
    functions run on a plain connection to a filled file, one transaction per claim, for a small
    and the full backlog, twice each (alternating, so both see the same background load)."""
    from tesp_api.store.sqlite import fair

    with sqlite_maker() as make:
        paths: dict[int, str] = {}
        for n in (1000 + claims, tasks):
            opener = make()
            store = opener()
            await store.open()
            await fill(store, n, 1, 500)
            await store.close()
            assert isinstance(store, SqliteTaskStore)
            paths[n] = store._path
        for _ in range(2):
            for n, path in paths.items():
                conn = sqlite3.connect(path, isolation_level=None)
                conn.execute("PRAGMA synchronous = NORMAL")
                started = time.perf_counter()
                for _ in range(claims // 2):
                    conn.execute("BEGIN IMMEDIATE")
                    if fair.take_under_way(conn, "bench", 0, 4_000_000_000_000) is None:
                        fair.take_fair(conn, "bench", 4_000_000_000_000, POLICY)
                    conn.execute("COMMIT")
                per_claim = (time.perf_counter() - started) / (claims // 2) * 1000
                conn.close()
                print(
                    f"  SQLite claim work, {n:,} queued: {per_claim:.3f} ms per claim (transaction included)"
                )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--no-mongo", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--fsync", action="store_true", help="SQLite with synchronous=FULL (the default setting)"
    )
    parser.add_argument(
        "--mongo-tasks",
        type=int,
        default=None,
        help="backlog on MongoDB (default --tasks; mongoeco queues ~20/s)",
    )
    parser.add_argument(
        "--sql", action="store_true", help="only the SQLite claim's own work (see sqlite_claim_cost)"
    )
    args = parser.parse_args()
    if args.sql:
        await sqlite_claim_cost(args.tasks, args.claims)
        return
    plans: list[tuple[str, AbstractContextManager[Callable[[], Opener]], int, int]] = []
    if not args.no_sqlite:
        plans.append(("SQLite" + (" (FULL)" if FSYNC else " (NORMAL)"), sqlite_maker(), 500, args.tasks))
    if not args.no_mongo:
        label = "MongoDB" if os.environ.get("TESP_TEST_MONGODB_URI") else "MongoDB (mongoeco emulator)"
        plans.append((label, mongo_maker(), 200, args.mongo_tasks or args.tasks))
    rows = []
    for label, maker, batch, tasks in plans:
        with maker as make:
            rows += await run_store(label, make, tasks, args.claims, batch)
    print()
    print(
        "| store | owners | backlog | claims/s, ~1,000 queued | claims/s, backlog"
        " | newcomer: claims before it | newcomer: create -> claim |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, owners, tasks, small, full, others, seconds in rows:
        print(
            f"| {label} | {owners} | {tasks:,} | {small:.0f} | {full:.0f} | {others} | {seconds * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    asyncio.run(main())
