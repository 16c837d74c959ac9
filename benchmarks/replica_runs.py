"""Replica runs (issue 12): two `tesp-api serve` replicas + one `tesp-api worker` on one store.

Store: the SQLite file (``--store sqlite``) or MongoDB through the mongoeco wire server
(``--store mongo``, tests/services/mongoeco.py). Every process runs an engine (serve's is on by
default), so all three claim tasks. During a burst of ``--tasks`` tasks from ``--clients`` clients
(POSTs spread over both replicas, the other one tried when one does not answer; Idempotency-Key =
task name), once half of them are answered, one fault (``--fault``):

* ``serve1`` / ``serve2`` / ``worker``: kill -9 of that process, restarted 2 s later;
* ``pulsar``: kill -9 of Pulsar's process group, restarted 3 s later;
* ``broker`` (``--mode amqp`` only): the private RabbitMQ node's app stopped for 5 s.

AMQP: each replica's staging server listens on its own port, and all of them are behind one
``pulsar.staging_url`` (a TCP relay to the first that accepts, as a load balancer would be), so
Pulsar reaches a live replica when the one that submitted a job is down.

Counted (benchmarks/crash_harness.py): created, final, answered tasks lost, duplicates, executors run
twice, states, SYSTEM_ERROR/PREEMPTED reasons. Prints a Markdown table per run for docs/engine.md.

    .venv/bin/python benchmarks/replica_runs.py --store sqlite --fault serve1 --tasks 100
    .venv/bin/python benchmarks/replica_runs.py --store mongo --fault all --tasks 20   # every fault, small
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.crash_harness import (
    Run,
    StagingBalancer,
    TespProcess,
    at_progress,
    free_port,
    fresh_dir,
    log,
    print_report,
    report,
    start_pulsar,
    tesp_env,
)

FAULTS = ("serve1", "serve2", "worker", "pulsar", "broker")


@contextlib.contextmanager
def store_env(kind: str, work: Path) -> Iterator[dict[str, str]]:
    if kind == "sqlite":
        yield {"TESP_API_DB__SQLITE_PATH": str(work / "tasks.sqlite3")}
        return
    from tests.services.mongoeco import mongoeco_server

    with mongoeco_server() as uri:
        yield {"TESP_API_DB__MONGODB_URI": uri, "TESP_API_DB__MONGODB_DATABASE": f"hc{int(time.time())}"}


async def replica_run(
    mode: str, store: str, fault: str, tasks: int, clients: int, seconds: float, final_wait: float, base: Path
) -> dict[str, object]:
    work = fresh_dir(base / f"{mode}-{store}-{fault}")
    markers = fresh_dir(work / "markers")
    markers.chmod(0o777)
    broker, pulsar = await start_pulsar(mode, work)
    procs: dict[str, TespProcess] = {}
    balancer = StagingBalancer()
    if mode == "amqp":
        await balancer.start()
    try:
        with store_env(store, work) as db:
            for label, kind in (("serve1", "serve"), ("serve2", "serve"), ("worker", "worker")):
                extra: dict[str, str] = {}  # worker ids: hostname:pid:random, new at each (re)start
                if mode == "amqp":  # each replica's staging server, all behind one URL
                    port = free_port()
                    balancer.backends.append(port)
                    extra["TESP_API_PULSAR__STAGING_LISTEN"] = f"127.0.0.1:{port}"
                    extra["TESP_API_PULSAR__STAGING_URL"] = balancer.url
                (work / label).mkdir()
                env = tesp_env(work / label, markers, db, pulsar.env(), **extra)
                procs[label] = TespProcess(kind, label, work / label, env)
                await asyncio.to_thread(procs[label].start)
            prefix = f"replica-{mode}-{store}-{fault}-"
            s1, s2 = procs["serve1"], procs["serve2"]
            run = Run([f"{prefix}{i:04d}" for i in range(tasks)], [lambda: s1.url, lambda: s2.url], seconds)
            t_fault = time.monotonic()

            async def do_fault() -> None:
                nonlocal t_fault
                log(f"fault {fault} ({run.posted} answered)")
                if fault in procs:
                    procs[fault].kill9()
                    await asyncio.sleep(2)
                    await asyncio.to_thread(procs[fault].start)
                elif fault == "pulsar":
                    await pulsar.kill9()
                    await asyncio.sleep(3)
                    await pulsar.start()
                elif fault == "broker" and broker is not None:
                    await asyncio.to_thread(broker.stop_app)
                    await asyncio.sleep(5)
                    await asyncio.to_thread(broker.start_app)
                t_fault = time.monotonic()

            started = time.monotonic()
            await asyncio.gather(run.post_all(clients), at_progress(run, 0.5, do_fault, markers))
            log(f"all {len(run.answered)} answered after {time.monotonic() - started:.0f} s; waiting")
            figures = await report(run, lambda: s2.url, markers, prefix, final_wait, t_fault)
            figures["wall time (s)"] = round(time.monotonic() - started)
            return figures
    finally:
        for proc in procs.values():
            proc.stop()
        await pulsar.stop()
        await balancer.stop()
        if broker is not None:
            await asyncio.to_thread(broker.shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=["rest", "amqp"], default="rest")
    parser.add_argument("--store", choices=["sqlite", "mongo"], default="sqlite")
    parser.add_argument("--fault", choices=[*FAULTS, "all"], default="all")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="each executor's sleep")
    parser.add_argument("--final-wait", type=float, default=300.0, help="seconds after the fault")
    parser.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tesp-replicas-"))
    faults = (
        [f for f in FAULTS if f != "broker" or args.mode == "amqp"] if args.fault == "all" else [args.fault]
    )
    for fault in faults:
        command = f"benchmarks/replica_runs.py --mode {args.mode} --store {args.store} --fault {fault} --tasks {args.tasks} --clients {args.clients}"
        figures = asyncio.run(
            replica_run(
                args.mode, args.store, fault, args.tasks, args.clients, args.seconds, args.final_wait, base
            )
        )
        print_report(f"Replicas ({args.mode.upper()}, {args.store}), kill/stop {fault}", figures, command)


if __name__ == "__main__":
    main()
