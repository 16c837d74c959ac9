"""What prometheus-client's multiprocess mode (``tesp-api serve`` with api.workers >= 1,
docs/metrics.md) costs against the one-process in-memory registry: CPU per counter increment and
CPU per /metrics body.

Each mode runs in a fresh interpreter (the mode is per process), rounds alternate the two modes.
For the scrape, the multiprocess side has ``--processes`` forked children that each counted every
metric first (the files one scrape reads: 2 API processes + the engine + the parent by default).

    .venv/bin/python benchmarks/bench_metrics_multiprocess.py [--rounds 3] [--processes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, multiprocessing, os, sys, tempfile, time
from prometheus_client import REGISTRY, generate_latest
from tesp_api import metrics

mode, processes = sys.argv[1], int(sys.argv[2])


def count_everything() -> None:
    metrics.TASKS_CREATED.inc()
    metrics.TASKS_FINISHED.labels("COMPLETE").inc()
    metrics.TASK_DURATION.observe(3)
    metrics.PULSAR_REQUESTS.labels("default", "ok").inc()
    metrics.PULSAR_REQUEST_SECONDS.labels("default").observe(0.01)
    metrics.TRANSFER_BYTES.labels("http", "download").inc(10)
    metrics.AMQP_MESSAGES.labels("out", "setup").inc()
    metrics.CALLBACK_ATTEMPTS.labels("ok").inc()
    metrics.process_started("api")


if mode == "multiprocess":
    metrics.use_multiprocess_dir(tempfile.mkdtemp())
    ctx = multiprocessing.get_context("fork")
    for _ in range(processes - 1):
        child = ctx.Process(target=count_everything)
        child.start()
        child.join()
count_everything()


def cpu_ns(fn, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1e9


summed = metrics.multiprocess_registry()
registry = REGISTRY if summed is None else summed
print(json.dumps({
    "inc_ns": cpu_ns(metrics.TASKS_CREATED.inc, 200_000),
    "labels_inc_ns": cpu_ns(lambda: metrics.PULSAR_REQUESTS.labels("default", "ok").inc(), 200_000),
    "scrape_us": cpu_ns(lambda: generate_latest(registry), 2_000) / 1000,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    results: dict[str, list[dict[str, float]]] = {"memory": [], "multiprocess": []}
    for _ in range(args.rounds):
        for mode in results:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(args.processes)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode].append(json.loads(out))
    for key, unit in (("inc_ns", "ns"), ("labels_inc_ns", "ns"), ("scrape_us", "us")):
        best = {mode: min(r[key] for r in runs) for mode, runs in results.items()}
        print(
            f"{key:14s} memory {best['memory']:8.1f} {unit}  multiprocess {best['multiprocess']:8.1f} {unit}"
            f"  ratio {best['multiprocess'] / best['memory']:.2f}  (best of {args.rounds}, CPU time)"
        )
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
