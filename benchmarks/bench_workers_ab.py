#!/usr/bin/env python
"""Creates with 1 vs 2 API processes (api.workers), engine off, for two or more source trees in ONE
run: every round loads each tree's 1-process and 2-process server in turn, so all of them see the
same background load (the machine is shared; docs/benchmarks.md, "SQLite creates from two API
processes"). Built on bench_api.py's servers, wrk and medians.

A tree is a checkout (a git worktree) of tesp-api; its servers run it through PYTHONPATH:

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/bench_workers_ab.py before=/tmp/before after=.
    git worktree remove /tmp/before

Prints each round (req/s and CPU per request of every server, the 2/1 ratio of every tree), the
medians, and each tree's 2-process rate against the first tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_api as bench


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="+", metavar="NAME=PATH", help="source trees to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--nice", type=int, default=-10, help="niceness of servers and wrk (root)")
    args = parser.parse_args()
    trees = {name: str(Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.trees)}
    bench.NICE[0] = args.nice
    wrk_path = bench.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-workers-ab-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # `python -m tesp_api` puts its working directory first on sys.path, before PYTHONPATH
        servers: dict[str, bench.Server] = {}
        for name, tree in trees.items():
            for workers in (1, 2):
                env = {
                    "PYTHONPATH": tree,
                    "TESP_API_API__WORKERS": str(workers),
                    "TESP_API_DB__SQLITE_PATH": str(tmp / f"{name}{workers}.sqlite3"),
                }
                servers[f"{name}{workers}"] = stack.enter_context(
                    bench.api_server(tmp, f"{name} workers={workers}", env, pin=False)
                )
        print(
            f"load average {os.getloadavg()[0]:.1f}, {args.rounds} rounds of {args.seconds:g} s", flush=True
        )
        loads: dict[str, list[bench.Load]] = {key: [] for key in servers}
        for r in range(args.rounds):
            for key, server in servers.items():
                loads[key].append(
                    bench.wrk(
                        wrk_path,
                        server.base + f"{bench.TES}/tasks",
                        server.pid,
                        seconds=args.seconds,
                        connections=args.clients,
                        body=bench.CREATE_BODY,
                        tmp=tmp,
                    )
                )
            each = "  ".join(f"{k} {v[-1].rate:5.0f}/s {v[-1].cpu_ms:.3f} ms" for k, v in loads.items())
            ratios = "  ".join(
                f"{n} 2/1 {loads[n + '2'][-1].rate / loads[n + '1'][-1].rate:.2f}" for n in trees
            )
            print(f"round {r + 1} load {os.getloadavg()[0]:.1f}  {each}  | {ratios}", flush=True)
        med = {key: bench.median_load(v) for key, v in loads.items()}
        for key, load in med.items():
            print(f"  {key}: {load}")
        first = next(iter(trees))
        for name in trees:
            print(
                f"median {name}: 2 processes / 1 = {med[name + '2'].rate / med[name + '1'].rate:.2f};"
                f" 2 processes vs {first}'s: {med[name + '2'].rate / med[first + '2'].rate:.2f}"
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
