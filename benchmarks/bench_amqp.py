"""AMQP vs REST: what N running tasks cost this service in steady state.

For each N and each mode, in the same run: a real Pulsar (REST: ``pulsar-serve``; AMQP: ``pulsar-main``
on the local RabbitMQ), the full engine with the embedded store, N tasks each running ``sleep`` under
bubblewrap (no container engine on these machines). Once all N jobs run in Pulsar and a settle time has
passed, a window of ``--window`` seconds is measured:

* CPU seconds of THIS process (engine, store, backend, AMQP consumer, staging server), per minute;
* REST mode: HTTP requests sent to Pulsar per minute; AMQP mode: messages published + received per
  minute (and requests Pulsar made to the staging server);
* CPU seconds per minute of the Pulsar server process group (for information).

Then every task is cancelled and everything is stopped. Usage:

    .venv/bin/python benchmarks/bench_amqp.py --tasks 100,500 --window 60

Prints one line per run and a markdown table (for docs/benchmarks.md, "## AMQP vs REST").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.pulsar.amqp import AmqpBackend, build_amqp_backend
from tesp_api.pulsar.port import PulsarBackend
from tesp_api.pulsar.rest import RestBackend
from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesState, TesTask
from tesp_api.tes.states import CANCELABLE_STATES
from tests.services import rabbitmq
from tests.services.pulsar import LocalPulsar
from tests.services.pulsar_amqp import PulsarAmqp


@dataclass
class Result:
    mode: str
    tasks: int
    window: float
    cpu_per_min: float
    traffic_per_min: float
    traffic_kind: str
    staging_per_min: float
    pulsar_cpu_per_min: float
    startup_seconds: float


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of_group(pgid: int) -> float:
    """CPU seconds (user+system) of the live processes of one process group (Pulsar, not its jobs)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] = pgrp (after state, ppid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def running_jobs(staging: Path) -> int:
    return sum(1 for _ in staging.glob("*/running"))


def kill_job_processes(staging: Path) -> None:
    for pid_file in staging.glob("*/pid"):
        with contextlib.suppress(ValueError, OSError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(what)


def base_settings(tmp: Path, pulsar: dict[str, object], n: int) -> Settings:
    return Settings.model_validate(
        {
            "pulsar": pulsar,
            "engine": {
                "work_dir": str(tmp / "work"),
                "claim_interval": 0.2,
                "lease_seconds": 60,
                "max_running_tasks": max(n, 1),
            },
            "runtime": {"type": "bwrap"},
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


async def run_one(
    mode: str, n: int, window: float, settle: float, tmp: Path, reconcile_after: float
) -> Result:
    store = SqliteTaskStore(str(tmp / "tasks.sqlite3"))
    await store.open()
    requests = {"n": 0}
    pulsar_rest: LocalPulsar | None = None
    pulsar_amqp: PulsarAmqp | None = None
    backend: PulsarBackend
    if mode == "rest":
        pulsar_rest = LocalPulsar(tmp / "pulsar", num_concurrent_jobs=n + 8)
        await asyncio.to_thread(pulsar_rest.start)
        settings = base_settings(tmp, {"url": pulsar_rest.url}, n)

        async def count(_: httpx.Request) -> None:
            requests["n"] += 1

        client = httpx.AsyncClient(
            base_url=pulsar_rest.url,
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            event_hooks={"request": [count]},
        )
        backend = RestBackend("default", pulsar_rest.url, client=client)
        staging_dir, pulsar_pgid = pulsar_rest.staging_directory, pulsar_rest.process.pid  # type: ignore[union-attr]
    else:
        pulsar_amqp = PulsarAmqp(
            tmp / "pulsar", key_prefix=rabbitmq.unique_prefix("bench"), num_concurrent_jobs=n + 8
        )
        await pulsar_amqp.start()
        settings = base_settings(
            tmp,
            {
                "url": None,
                "amqp_url": pulsar_amqp.amqp_url,
                "amqp_key_prefix": pulsar_amqp.key_prefix,
                "amqp_reconcile_after": reconcile_after,
            },
            n,
        )
        backend = build_amqp_backend(settings, settings.pulsar.effective_servers()[0])
        staging_dir, pulsar_pgid = pulsar_amqp.staging_directory, pulsar_amqp.process.pid  # type: ignore[union-attr]

    def traffic() -> float:
        if isinstance(backend, AmqpBackend):
            return float(sum(backend.client.stats.published.values()) + backend.client.stats.received)
        return float(requests["n"])

    def staging_requests() -> float:
        if isinstance(backend, AmqpBackend):
            return float(backend.staging.stats["input_gets"] + backend.staging.stats["output_posts"])
        return 0.0

    engine = Engine(settings, store, backends={"default": backend})
    await engine.start()
    ids: list[str] = []
    try:
        started = time.monotonic()
        for _ in range(n):
            task = TesTask.model_validate({"executors": [{"image": "a", "command": ["sleep", "3600"]}]})
            task.id = new_task_id()
            await store.create(task, None)
            ids.append(task.id)

        async def all_running() -> bool:
            return running_jobs(staging_dir) >= n

        await wait_until(all_running, 60 + n * 1.0, f"{mode}: not all {n} jobs running")
        startup = time.monotonic() - started
        await asyncio.sleep(settle)
        cpu0, traffic0, staging0, pulsar0 = (
            cpu_self(),
            traffic(),
            staging_requests(),
            cpu_of_group(pulsar_pgid),
        )
        t0 = time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - t0
        per_min = 60.0 / elapsed
        result = Result(
            mode=mode,
            tasks=n,
            window=elapsed,
            cpu_per_min=(cpu_self() - cpu0) * per_min,
            traffic_per_min=(traffic() - traffic0) * per_min,
            traffic_kind="messages" if mode == "amqp" else "HTTP requests",
            staging_per_min=(staging_requests() - staging0) * per_min,
            pulsar_cpu_per_min=(cpu_of_group(pulsar_pgid) - pulsar0) * per_min,
            startup_seconds=startup,
        )
    finally:
        for task_id in ids:
            rec = await store.update(
                task_id,
                expected=CANCELABLE_STATES,
                state=TesState.CANCELED,
                log=LogPatch(system_logs=["bench"]),
            )
            if rec is not None:
                engine.notify_cancel(task_id)

        async def all_inactive() -> bool:
            for task_id in ids:
                rec = await store.get(task_id)
                if rec is not None and rec.active:
                    return False
            return True

        with contextlib.suppress(TimeoutError):
            await wait_until(all_inactive, 120, "tasks still active")
        await engine.stop()
        await store.close()
        kill_job_processes(staging_dir)
        if pulsar_rest is not None:
            await asyncio.to_thread(pulsar_rest.stop)
        if pulsar_amqp is not None:
            await pulsar_amqp.stop()
            await pulsar_amqp.delete_queues()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="100,500", help="comma-separated numbers of running tasks")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait once all jobs run")
    parser.add_argument("--modes", default="rest,amqp")
    parser.add_argument("--reconcile-after", type=float, default=60.0, help="pulsar.amqp_reconcile_after")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not rabbitmq.ensure_running():
        raise SystemExit("RabbitMQ is not running on 127.0.0.1:5672")
    results: list[Result] = []
    for n in [int(x) for x in args.tasks.split(",")]:
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-{n}-") as tmp:
                r = await run_one(mode, n, args.window, args.settle, Path(tmp), args.reconcile_after)
            results.append(r)
            print(
                f"{r.mode:4} N={r.tasks:4}: service CPU {r.cpu_per_min:6.2f} s/min, "
                f"{r.traffic_per_min:8.1f} {r.traffic_kind}/min, staging {r.staging_per_min:5.1f} req/min, "
                f"Pulsar CPU {r.pulsar_cpu_per_min:6.2f} s/min (startup {r.startup_seconds:.0f} s, "
                f"window {r.window:.0f} s)",
                flush=True,
            )
    print()
    print(
        "| mode | running tasks | service CPU s/min | to/from Pulsar per min | Pulsar CPU s/min | all running after |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.mode} | {r.tasks} | {r.cpu_per_min:.2f} | {r.traffic_per_min:.0f} {r.traffic_kind} | "
            f"{r.pulsar_cpu_per_min:.2f} | {r.startup_seconds:.0f} s |"
        )


if __name__ == "__main__":
    asyncio.run(main())
