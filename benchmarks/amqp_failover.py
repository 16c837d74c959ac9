"""AMQP failover across hosts, timed: how long after ``kill -9`` of the replica that submitted a task
the other replica has finished it (docs/amqp.md, "Several replicas"; the behaviour is tested in
tests/pulsar/test_amqp_failover.py, which this reuses).

Per run: a real ``pulsar-main`` on the local RabbitMQ, two ``tesp-api serve`` replicas with their own
work dirs on one SQLite store and one ``pulsar.staging_dir``, Pulsar reaching them through a TCP
balancer, lease 3 s. Window ``running``: the job (``sleep --sleep``) runs in Pulsar when the first
replica is killed; window ``unsent``: the setup is recorded but the broker refuses it. Prints one line
per run and a markdown table: seconds from the kill to the task's final state (as the second replica
answers), the final state, whether the output is right, the size of the setup entry in the store
record, connections the balancer gave each replica.

    .venv/bin/python benchmarks/amqp_failover.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.local import free_port
from tests.pulsar.test_amqp_failover import (
    SetupRefusal,
    Site,
    copy_task,
    final_task,
    setup_recorded,
    site_running,
    until,
)
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp
from tests.services.tcp_balancer import running_balancer


async def one_run(root: Path, window: str, sleep: int) -> dict[str, object]:
    pulsar = PulsarAmqp(root / "pulsar", key_prefix=rabbitmq.unique_prefix("bf"))
    ports = [free_port(), free_port()]
    with running_balancer([("127.0.0.1", p) for p in ports]) as balancer:
        site = Site(root, pulsar, balancer, ports)
        first, second = site.replicas
        async with site_running(site):
            policy = f"tesp-bench-{pulsar.key_prefix}"
            with SetupRefusal(pulsar, policy, active=window == "unsent") as refusal:
                first.start()
                second.start()  # standing by: it claims the task once the first one's lease expires
                task_id = tes.HTTPClient(first.url, timeout=10).create_task(
                    copy_task(site, sleep if window == "running" else 1)
                )
                if window == "running":
                    await until(lambda: asyncio.to_thread(pulsar.job_ids_with_pid_files), "the job running")
                else:
                    await setup_recorded(site, task_id)
                owner = site.lease_owner(task_id)
                victim = first if owner == "replica-a" else second
                survivor = second if victim is first else first
                killed_at = time.monotonic()
                site.kill_as_host_loss(victim)
                refusal.lift()
                done = await final_task(tes.HTTPClient(survivor.url, timeout=10), task_id, timeout=300)
            seconds = time.monotonic() - killed_at
            setup_bytes = len(json.dumps(site.backend_data(task_id).get("amqp_setup")))
        routed = dict(balancer.routed)
    output_ok = (site.results / "out.txt").exists() and (site.results / "out.txt").read_text() == (
        "payload from the first host\n"
    )
    return {
        "window": window,
        "seconds": round(seconds, 1),
        "state": done.state,
        "output_ok": output_ok,
        "setup_bytes": setup_bytes,
        "routed": routed,
        "killed": victim.env["TESP_API_ENGINE__WORKER_ID"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sleep", type=int, default=15, help="seconds the job runs (window 'running')")
    parser.add_argument("--windows", default="running,unsent")
    parser.add_argument("--keep", help="keep each run's directory (logs, store) under this directory")
    args = parser.parse_args()
    rabbitmq.require_broker()
    results: list[dict[str, object]] = []
    for window in args.windows.split(","):
        for i in range(args.runs):
            if args.keep:
                tmp = tempfile.mkdtemp(prefix="tesp-failover-", dir=args.keep)
                result = await one_run(Path(tmp), window, args.sleep)
                result["dir"] = tmp
            else:
                with tempfile.TemporaryDirectory(prefix="tesp-failover-") as tmp:
                    result = await one_run(Path(tmp), window, args.sleep)
            print(f"{window} run {i + 1}: {result}", flush=True)
            results.append(result)
    print(
        "\n| window | runs | COMPLETE with output | kill -> final, s (median, max) | setup entry in the store |"
    )
    print("|---|---|---|---|---|")
    for window in args.windows.split(","):
        rows = [r for r in results if r["window"] == window]
        ok = sum(1 for r in rows if r["state"] == "COMPLETE" and r["output_ok"])
        secs = [float(r["seconds"]) for r in rows]  # type: ignore[arg-type]
        size = max(int(r["setup_bytes"]) for r in rows)  # type: ignore[call-overload]
        print(
            f"| {window} | {len(rows)} | {ok} | {statistics.median(secs):.1f}, {max(secs):.1f} | {size} bytes |"
        )


if __name__ == "__main__":
    asyncio.run(main())
