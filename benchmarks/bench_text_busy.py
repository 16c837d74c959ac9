"""How often Pulsar's fork/exec race fails a job ("command.sh: Text file busy", exit 126), before and after.

Many trivial jobs (a one-line ``true`` tool script, as bench_engine.py's direct side sends them:
setup, upload, submit, poll) go at once to a real local Pulsar (queued_python, 8 worker threads),
in rounds that alternate the two launchers on a fresh Pulsar each:

* ``plain``: Pulsar's own ``pulsar-serve``, whose shell execs each job's command.sh: a child forked
  meanwhile by another Pulsar thread still holding the file open for writing fails it (ETXTBSY);
* ``tesp``: ``python -m tesp_api.pulsar.serve`` (what LocalPulsar runs), which starts command.sh
  through its interpreter (tesp_api/pulsar/serve.py).

Prints per round the jobs, the ones whose status says "Text file busy", other failures, wall time
and the load average; then the totals per launcher (docs/benchmarks.md). No task passes through
tesp-api: the race is Pulsar's, so only Pulsar is measured.

    .venv/bin/python benchmarks/bench_text_busy.py [--jobs 400] [--rounds 2] [--nice -10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import CONCURRENT_JOBS, _again, pulsar_job
from tesp_api.local import LocalPulsar
from tesp_api.pulsar.port import FINAL_STATUSES

BUSY = "Text file busy"
LAUNCHERS = {"plain": True, "tesp": False}  # name -> LocalPulsar(exec_job_scripts=...)


async def final_status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    delay = 0.05
    while True:
        try:
            status: dict[str, Any] = (await client.get(f"/jobs/{job_id}/status")).json()
        except httpx.TransportError:  # a gunicorn worker restarted under load: ask again
            status = {}
        if status.get("status") in FINAL_STATUSES:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def burst(url: str, n: int, tag: str, in_flight: int) -> list[dict[str, Any]]:
    """``n`` jobs, ``in_flight`` of them at a time (submitted, waited for, deleted): Pulsar's queue stays
    full, so submits (command.sh written) keep meeting its workers' forks. (All at once, thousands of
    requests waiting on httpx's pool spin the client's CPU for minutes.)"""
    limits = httpx.Limits(max_connections=20)
    slots = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(job_id: str) -> dict[str, Any]:
            async with slots:
                await pulsar_job(client, job_id, "true")
                status = await final_status(client, job_id)
                await _again(lambda: client.delete(f"/jobs/{job_id}"))
                return status

        return list(await asyncio.gather(*(one(f"busy-{tag}-{i}") for i in range(n))))


def one_round(launcher: str, jobs: int, tag: str, in_flight: int) -> tuple[int, int, float]:
    """(jobs failed by ETXTBSY, other non-zero exits, wall seconds) of one burst on a fresh Pulsar."""
    with tempfile.TemporaryDirectory(prefix="tesp-bench-busy-") as tmp:
        pulsar = LocalPulsar(
            Path(tmp) / "pulsar", num_concurrent_jobs=CONCURRENT_JOBS, exec_job_scripts=LAUNCHERS[launcher]
        )
        pulsar.start()
        try:
            started = time.perf_counter()
            statuses = asyncio.run(burst(pulsar.url, jobs, tag, in_flight))
            wall = time.perf_counter() - started
        finally:
            pulsar.stop(timeout=5.0)
    busy = sum(BUSY in f"{s.get('stderr')}{s.get('job_stderr')}" for s in statuses)
    other = sum(1 for s in statuses if str(s.get("returncode")) not in ("0", "None")) - busy
    return busy, other, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=400, help="jobs per round (default 400)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per launcher, alternating (default 2)")
    parser.add_argument("--in-flight", type=int, default=64, help="jobs in Pulsar at a time (default 64)")
    parser.add_argument(
        "--nice", type=int, default=None, help="os.nice() increment for this process and Pulsar"
    )
    args = parser.parse_args()
    if args.nice is not None:
        os.nice(args.nice)
    totals = {name: [0, 0, 0] for name in LAUNCHERS}  # busy, other, jobs
    print("| round | launcher | jobs | Text file busy | other failures | wall s | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in range(args.rounds):
        order = list(LAUNCHERS) if r % 2 == 0 else list(reversed(LAUNCHERS))
        for name in order:
            busy, other, wall = one_round(name, args.jobs, f"{r}-{name}-{os.getpid()}", args.in_flight)
            totals[name][0] += busy
            totals[name][1] += other
            totals[name][2] += args.jobs
            load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"| {r + 1} | {name} | {args.jobs} | {busy} | {other} | {wall:.1f} | {load} |", flush=True)
    for name, (busy, other, jobs) in totals.items():
        print(
            f"{name}: {busy} of {jobs} jobs failed 'Text file busy' ({busy / jobs:.2%}), {other} other failures"
        )


if __name__ == "__main__":
    main()
