#!/usr/bin/env python
"""API and task store benchmark (issue 2, "Performance").

Starts the real service (``python -m tesp_api serve``, engine disabled) and, for comparison, a bare
FastAPI app answering a small JSON document, served by uvicorn with the same options, each in its
own process on 127.0.0.1. Then prints, each against the bare endpoint:

* task-create throughput with 32 concurrent httpx clients (goal: >= 50 % of bare);
* GET task latency p50/p95 (one client, sequential);
* list latency p50/p95 for the first page and for a page deep in the list (goal: independent of
  depth), with N tasks stored (bulk-loaded through the store adapter, not over HTTP).

for the embedded SQLite store (N = 100,000 by default) and for the MongoDB adapter through the
mongoeco wire server (much smaller N: mongoeco is an emulator in Python; its figures say nothing
about a real MongoDB). Everything is bounded: fixed request counts, a timeout per server start.

    .venv/bin/python benchmarks/bench_api.py                # full run (a few minutes)
    .venv/bin/python benchmarks/bench_api.py --quick        # small N, smoke test
    .venv/bin/python benchmarks/bench_api.py --no-mongo     # embedded store only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tesp_api.store.port import ListQuery, TaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesTask

TES = "/ga4gh/tes/v1"
START_TIMEOUT = 90.0
CREATE_BODY: dict[str, Any] = {
    "name": "bench",
    "tags": {"project": "bench"},
    "executors": [{"image": "alpine", "command": ["echo", "hello"]}],
}


# -- servers -------------------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """The baseline: FastAPI + uvicorn with the options tesp_api.service.serve_async uses."""
    import uvicorn

    from tesp_api.config.settings import LoggingSettings
    from tesp_api.service import configure_logging

    app = FastAPI()
    document = {"id": "7a6c4c9e-2b1f-4a56-9d0e-3f2b1c0d9e8a", "state": "QUEUED"}

    @app.get("/bare")
    async def get_bare() -> dict[str, str]:
        return document

    @app.post("/bare")
    async def post_bare(request: Request) -> dict[str, str]:
        await request.json()
        return {"id": str(uuid.uuid4())}

    configure_logging(LoggingSettings())
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        log_config=None,
        lifespan="on",
        server_header=False,
    )
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    base: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server_process(argv: list[str], env: dict[str, str], ready_url: str, log_path: Path) -> Iterator[int]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
            try:
                if httpx.get(ready_url, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {START_TIMEOUT}s; see {log_path}")
            time.sleep(0.2)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextmanager
def bare_server(workdir: Path) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port)]
    with server_process(argv, dict(os.environ), f"{base}/bare", workdir / "bare.log") as pid:
        yield Server(base, pid)


@contextmanager
def api_server(workdir: Path, db_env: dict[str, str], label: str) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = workdir / "settings.toml"
    settings.write_text("[default]\n")
    env = {**os.environ, "TESP_API_ENGINE__ENABLED": "false", **db_env}
    argv = [
        sys.executable,
        "-m",
        "tesp_api",
        "serve",
        "--settings",
        str(settings),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with server_process(argv, env, f"{base}{TES}/service-info", workdir / f"api-{label}.log") as pid:
        yield Server(base, pid)


# -- load ----------------------------------------------------------------------------------------


async def bulk_load(store: TaskStore, count: int, chunk: int = 500) -> list[str]:
    """Create ``count`` tasks through the store adapter (concurrently, so group commit applies)."""
    template = TesTask(
        name="bulk", tags={"project": "bulk"}, executors=[TesExecutor(image="alpine", command=["echo", "hi"])]
    )
    ids: list[str] = []
    for start in range(0, count, chunk):
        tasks = [template.model_copy(update={"id": new_task_id()}) for _ in range(min(chunk, count - start))]
        records = await asyncio.gather(*(store.create(t, None) for t in tasks))
        ids += [r.id for r in records]
    return ids


async def deep_page_token(store: TaskStore, total: int, page_size: int, step: int) -> str | None:
    """A token (as the API issues them) for a full page near the end of the unfiltered list:
    walk the list in big steps and keep the last token that still has ``page_size`` tasks below."""
    token: str | None = None
    deep: str | None = None
    seen = 0
    while True:
        page = await store.list(ListQuery(page_size=step, page_token=token))
        seen += len(page.records)
        if page.next_page_token is None or total - seen < page_size:
            return deep
        deep = token = page.next_page_token


# -- measurements -----------------------------------------------------------------------------------


@dataclass
class Latency:
    p50: float
    p95: float

    def __str__(self) -> str:
        return f"p50 {self.p50 * 1000:7.2f} ms  p95 {self.p95 * 1000:7.2f} ms"


@dataclass
class Rate:
    per_second: float
    cpu_ms: float  # server CPU per request


async def throughput(server: Server, url: str, body: dict[str, Any], clients: int, total: int) -> Rate:
    """Requests per second of POST ``url`` from ``clients`` concurrent clients (one httpx client and
    connection each: a shared httpx pool costs the client side more than the servers measured),
    and the server's CPU time per request, which other load on the machine hardly changes."""
    sessions = [httpx.AsyncClient(timeout=60.0) for _ in range(clients)]
    remaining = total
    failures = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            response = await client.post(url, json=body)
            if response.status_code >= 300:
                failures += 1

    try:
        await asyncio.gather(*(c.post(url, json=body) for c in sessions))  # connect and warm up
        started, cpu_before = time.perf_counter(), server.cpu_seconds()
        await asyncio.gather(*(worker(c) for c in sessions))
        elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu_before
    finally:
        for client in sessions:
            await client.aclose()
    if failures:
        raise RuntimeError(f"{failures} of {total} POST {url} failed")
    return Rate(total / elapsed, cpu / total * 1000)


async def latencies(series: list[list[str]], warmup: int = 5) -> list[Latency]:
    """Sequential GETs from one client, the series interleaved request by request so that they
    share whatever else the machine is doing; one Latency per series."""
    times: list[list[float]] = [[] for _ in series]
    async with httpx.AsyncClient(timeout=60.0) as client:
        for urls in series:
            for url in urls[:warmup]:
                (await client.get(url)).raise_for_status()
        for i in range(max(len(urls) for urls in series)):
            for urls, spent in zip(series, times, strict=True):
                if i < len(urls):
                    started = time.perf_counter()
                    response = await client.get(urls[i])
                    spent.append(time.perf_counter() - started)
                    response.raise_for_status()
    result = []
    for spent in times:
        spent.sort()
        result.append(Latency(statistics.median(spent), spent[min(len(spent) - 1, int(len(spent) * 0.95))]))
    return result


@dataclass
class Figures:
    create: Rate
    get: Latency
    list_first: Latency
    list_deep: Latency
    bare_post: Rate
    bare_get: Latency
    bare_list: Latency
    filtered: dict[str, Latency]


async def measure(
    bare: Server,
    api: Server,
    ids: list[str],
    deep_token: str | None,
    args: argparse.Namespace,
    creates: int,
    reads: int,
) -> Figures:
    """Each figure of the service next to the same figure of the bare endpoint, taken alternately
    so that both see the same background load; the best throughput round of each is kept."""
    creates_seen: list[Rate] = []
    bare_seen: list[Rate] = []
    for _ in range(args.rounds):
        bare_seen.append(await throughput(bare, f"{bare.base}/bare", CREATE_BODY, args.clients, creates))
        creates_seen.append(
            await throughput(api, f"{api.base}{TES}/tasks", CREATE_BODY, args.clients, creates)
        )
    step = max(1, len(ids) // reads)
    task_urls = [f"{api.base}{TES}/tasks/{task_id}" for task_id in ids[::step][:reads]]
    bare_get, get = await latencies([[f"{bare.base}/bare"] * len(task_urls), task_urls])
    list_url = f"{api.base}{TES}/tasks?page_size={args.page_size}"
    deep_url = f"{list_url}&page_token={deep_token}" if deep_token else list_url
    n = args.list_requests
    bare_list, list_first, list_deep = await latencies(
        [[f"{bare.base}/bare"] * n, [list_url] * n, [deep_url] * n]
    )
    filters = {
        "tag every task has": "tag_key=project",
        "tag value no task has": "tag_key=project&tag_value=nobody",
        "name prefix no task has": "name_prefix=nobody",
    }
    filtered = dict(
        zip(filters, await latencies([[f"{list_url}&{q}"] * n for q in filters.values()]), strict=True)
    )

    def best(rates: list[Rate]) -> Rate:
        return max(rates, key=lambda r: r.per_second)

    return Figures(
        best(creates_seen), get, list_first, list_deep, best(bare_seen), bare_get, bare_list, filtered
    )


def report(title: str, stored: int, f: Figures, args: argparse.Namespace) -> None:
    print(f"\n## {title}\n({stored} tasks stored; list: page_size {args.page_size}, view MINIMAL)")
    print(
        f"create, {args.clients} clients: {f.create.per_second:6.0f} req/s vs bare POST {f.bare_post.per_second:6.0f}"
        f" req/s = {f.create.per_second / f.bare_post.per_second:6.1%} of bare   (goal >= 50%)"
    )
    print(
        f"  server CPU per request: create {f.create.cpu_ms:5.2f} ms, bare POST {f.bare_post.cpu_ms:5.2f} ms"
        f" -> CPU-bound capacity {f.bare_post.cpu_ms / f.create.cpu_ms:6.1%} of bare"
    )
    for name, value, base in (
        ("GET task", f.get, f.bare_get),
        ("list, first page", f.list_first, f.bare_list),
        ("list, deep page", f.list_deep, f.bare_list),
    ):
        print(
            f"{name:17s} {value}   bare GET {base}   = {value.p50 / base.p50:5.1f}x / {value.p95 / base.p95:5.1f}x"
            " (p50/p95)"
        )
    print(
        f"list deep page / first page p50: {f.list_deep.p50 / f.list_first.p50:4.2f}"
        "   (goal: about 1, independent of depth)"
    )
    for name, value in f.filtered.items():
        print(f"list, {name:24s} {value}")


# -- runs ------------------------------------------------------------------------------------------


async def run_sqlite(workdir: Path, args: argparse.Namespace, bare: Server) -> None:
    from tesp_api.store.sqlite import SqliteTaskStore

    path = workdir / "tasks.sqlite3"
    store = SqliteTaskStore(str(path))
    await store.open()
    started = time.perf_counter()
    ids = await bulk_load(store, args.tasks)
    load_seconds = time.perf_counter() - started
    token = await deep_page_token(store, args.tasks, args.page_size, step=2047)
    await store.close()
    print(
        f"\n(bulk load of {args.tasks} tasks through SqliteTaskStore.create: {load_seconds:.1f} s,"
        f" {args.tasks / load_seconds:.0f} tasks/s)"
    )
    with api_server(workdir, {"TESP_API_DB__SQLITE_PATH": str(path)}, "sqlite") as base:
        figures = await measure(bare, base, ids, token, args, args.creates, args.reads)
    report("embedded store (SQLite)", args.tasks, figures, args)


async def run_mongo(workdir: Path, args: argparse.Namespace, bare: Server) -> None:
    from tesp_api.store.mongo import MongoTaskStore
    from tests.services.mongoeco import MongoUnavailable, mongoeco_server

    try:
        with mongoeco_server() as uri:
            store = MongoTaskStore(uri, database="tesp_bench", collection="tasks")
            await store.open()
            ids = await bulk_load(store, args.mongo_tasks, chunk=50)
            token = await deep_page_token(store, args.mongo_tasks, args.page_size, step=args.page_size)
            await store.close()
            db_env = {"TESP_API_DB__MONGODB_URI": uri, "TESP_API_DB__MONGODB_DATABASE": "tesp_bench"}
            with api_server(workdir, db_env, "mongo") as base:
                figures = await measure(bare, base, ids, token, args, args.mongo_creates, args.mongo_reads)
    except MongoUnavailable as exc:
        print(f"\n(MongoDB adapter skipped: {exc})")
        return
    report(
        "MongoDB adapter through mongoeco - mongoeco figures, they say nothing about a real MongoDB",
        args.mongo_tasks,
        figures,
        args,
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        workdir = Path(tmp)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        with bare_server(workdir) as bare:
            await run_sqlite(workdir, args, bare)
            if args.mongo:
                await run_mongo(workdir, args, bare)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks stored in the embedded store")
    parser.add_argument("--creates", type=int, default=3000, help="POSTs per throughput round")
    parser.add_argument("--reads", type=int, default=300, help="sequential GETs for a latency figure")
    parser.add_argument("--list-requests", type=int, default=50, help="sequential list requests per figure")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds; the best is reported")
    parser.add_argument("--page-size", type=int, default=256)
    parser.add_argument("--no-mongo", dest="mongo", action="store_false", help="skip the MongoDB adapter")
    parser.add_argument("--mongo-tasks", type=int, default=1000, help="tasks stored in mongoeco")
    parser.add_argument("--mongo-creates", type=int, default=300)
    parser.add_argument("--mongo-reads", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.creates, args.reads, args.list_requests, args.rounds = 3000, 500, 50, 10, 1
        args.mongo_tasks, args.mongo_creates, args.mongo_reads = 300, 64, 20
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_bare:
        serve_bare(arguments.serve_bare)
    else:
        asyncio.run(main(arguments))
