"""Crash runs (issue 12): N tasks from M clients while `tesp-api serve` and then Pulsar are killed -9.

REST mode: Pulsar = pulsar-serve; AMQP mode: pulsar-main on a private RabbitMQ node, plus a broker
stop/start. One `tesp-api serve` (engine inside) on the embedded SQLite store. Clients send
``Idempotency-Key: <task name>`` and retry until answered. Faults, by share of tasks answered:
1/3: kill -9 of serve, restarted 2 s later (same store, port and staging port); 2/3: kill -9 of
Pulsar's process group, restarted 3 s later; AMQP, 5/6: the broker's app stopped for 5 s.
Then every answered task must be final within ``--final-wait`` seconds of the last fault.

Goal: 0 answered tasks lost, 0 non-final, 0 duplicates, 0 executors run twice (benchmarks/crash_harness.py
says how each is counted). Prints a Markdown table per mode for docs/engine.md ("Crash runs").

    .venv/bin/python benchmarks/crash_runs.py --mode rest --tasks 300 --clients 32
    .venv/bin/python benchmarks/crash_runs.py --mode amqp --tasks 30 --clients 8     # small
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.crash_harness import (
    Run,
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


async def crash_run(
    mode: str, tasks: int, clients: int, seconds: float, final_wait: float, base: Path
) -> dict[str, object]:
    work = fresh_dir(base / mode)
    markers = fresh_dir(work / "markers")
    markers.chmod(0o777)  # executors run as runtime.sandbox_user
    broker, pulsar = await start_pulsar(mode, work)
    extra = {"TESP_API_PULSAR__STAGING_LISTEN": f"127.0.0.1:{free_port()}"} if mode == "amqp" else {}
    env = tesp_env(
        work, markers, {"TESP_API_DB__SQLITE_PATH": str(work / "tasks.sqlite3")}, pulsar.env(), **extra
    )
    serve = TespProcess("serve", "serve", work, env)
    await asyncio.to_thread(serve.start)
    prefix = f"crash-{mode}-"
    run = Run([f"{prefix}{i:04d}" for i in range(tasks)], [lambda: serve.url], seconds)
    t_fault = time.monotonic()

    async def kill_serve() -> None:
        nonlocal t_fault
        log(f"kill -9 serve ({run.posted} answered)")
        serve.kill9()
        await asyncio.sleep(2)
        await asyncio.to_thread(serve.start)
        t_fault = time.monotonic()

    async def kill_pulsar() -> None:
        nonlocal t_fault
        log(f"kill -9 Pulsar ({run.posted} answered)")
        await pulsar.kill9()
        await asyncio.sleep(3)
        await pulsar.start()
        t_fault = time.monotonic()

    async def bounce_broker() -> None:
        nonlocal t_fault
        assert broker is not None
        log(f"broker stop_app ({run.posted} answered)")
        await asyncio.to_thread(broker.stop_app)
        await asyncio.sleep(5)
        await asyncio.to_thread(broker.start_app)
        t_fault = time.monotonic()

    try:
        started = time.monotonic()

        async def faults() -> None:
            await at_progress(run, 1 / 3, kill_serve)  # while POSTs are in flight
            await at_progress(run, 2 / 3, kill_pulsar, markers)
            if broker is not None:
                await at_progress(run, 5 / 6, bounce_broker, markers)

        await asyncio.gather(run.post_all(clients), faults())
        log(
            f"all {len(run.answered)} answered after {time.monotonic() - started:.0f} s; waiting for final states"
        )
        figures = await report(run, lambda: serve.url, markers, prefix, final_wait, t_fault)
        figures["wall time (s)"] = round(time.monotonic() - started)
        return figures
    finally:
        serve.stop()
        await pulsar.stop()
        if broker is not None:
            await asyncio.to_thread(broker.shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=["rest", "amqp", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="each executor's sleep")
    parser.add_argument("--final-wait", type=float, default=300.0, help="seconds after the last fault")
    parser.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tesp-crash-"))
    modes = ["rest", "amqp"] if args.mode == "both" else [args.mode]
    command = " ".join(["benchmarks/crash_runs.py", *sys.argv[1:]])
    for mode in modes:
        figures = asyncio.run(crash_run(mode, args.tasks, args.clients, args.seconds, args.final_wait, base))
        print_report(
            f"Crash run, {mode.upper()}: {args.tasks} tasks, {args.clients} clients", figures, command
        )


if __name__ == "__main__":
    main()
