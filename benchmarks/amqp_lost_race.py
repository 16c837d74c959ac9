"""How often a real Pulsar (AMQP) answers a status request "lost" while it sets the job up.

Pulsar 0.16 takes setups and status requests in from separate queues, one consumer thread each. With a
setup and a status request for one job both queued while Pulsar is down, the restarted Pulsar answers
the request before the setup (a bare "lost": no job directory), after it (the job's real status), or,
when its setup thread creates the job directory between the status thread's ``exists()`` check and its
listing of the directory, "lost" *listing* a job directory (no ``preprocessed``: not launched). The
AMQP backend used to believe that last kind at once (docs/amqp.md, '"lost" too early'). Each round
starts a fresh Pulsar (free directories, a queue prefix of its own on the broker at 127.0.0.1:5672)
with ``--jobs`` setups and requests queued, and counts the first answer per job.

    .venv/bin/python benchmarks/amqp_lost_race.py --rounds 40 --jobs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.pulsar.amqp_messages import RemoteStaging, SetupMessage, StagedFile
from tesp_api.pulsar.amqp_names import EXCHANGE, PulsarQueues
from tests.services import rabbitmq
from tests.services.pulsar_amqp import PulsarAmqp


def kind(answer: dict[str, Any]) -> str:
    if answer.get("status") != "lost":
        return "after the setup"
    return "lost listing a directory" if answer.get("job_directory_contents") else "bare lost"


async def one_round(root: Path, jobs: int, settle: float) -> Counter[str]:
    pulsar = PulsarAmqp(root, key_prefix=rabbitmq.unique_prefix("race"))
    queues = PulsarQueues.for_manager(amqp_key_prefix=pulsar.key_prefix)
    connection = await aio_pika.connect(rabbitmq.URL)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        for name in (*queues.consumed_by_pulsar, queues.status_update):
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind(exchange, routing_key=name)
        updates = await channel.declare_queue(queues.status_update, durable=True)
        for _ in range(jobs):
            job_id = str(uuid.uuid4())
            setup = SetupMessage(
                job_id=job_id,
                command_line="true",
                remote_staging=RemoteStaging(files=[StagedFile("x.sh", contents="true", type="tool")]),
            )
            for key, body in ((queues.setup, setup.to_body()), (queues.status, {"job_id": job_id})):
                message = aio_pika.Message(
                    json.dumps(body).encode(), content_type="application/json", delivery_mode=2
                )
                await exchange.publish(message, routing_key=key)
        await pulsar.start()
        await asyncio.sleep(settle)
        await pulsar.stop()
        first: dict[str, dict[str, Any]] = {}
        while (got := await updates.get(no_ack=True, fail=False)) is not None:
            answer = json.loads(got.body)
            first.setdefault(str(answer["job_id"]), answer)
        for answer in first.values():
            if kind(answer) == "lost listing a directory":
                print("  listed:", answer["job_directory_contents"], flush=True)
        return Counter(kind(a) for a in first.values())
    finally:
        await connection.close()
        await pulsar.stop()
        await pulsar.delete_queues()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=1, help="setups + status requests queued per round")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds Pulsar runs per round")
    args = parser.parse_args()
    rabbitmq.require_broker()
    totals: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="tesp-lost-race-") as scratch:
        for i in range(args.rounds):
            totals += await one_round(Path(scratch) / f"r{i}", args.jobs, args.settle)
            print(f"round {i + 1}/{args.rounds}: {dict(totals)}", flush=True)
    print(f"first answers per job over {args.rounds} Pulsar starts: {dict(totals)}")


if __name__ == "__main__":
    asyncio.run(main())
