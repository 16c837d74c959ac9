#!/usr/bin/env python
"""API and task store benchmark (issue 15): every ratio against its goal, in one run.

The load comes from ``wrk`` (Debian's package, C; installed with apt-get when missing), never from
a Python client: at thousands of requests per second a Python client is the limit, not the server.
wrk is pinned to the last CPU, and a server said to run "on one core" is pinned to CPU 0.

Servers, each its own process on 127.0.0.1, all with the uvicorn options of ``tesp-api serve``
(tesp_api.service.uvicorn_config):

* bare: a FastAPI app with ``GET /bare`` (a two-field document) and ``POST /bare`` (reads the JSON
  body, answers a uuid4), with and without uvicorn's access log;
* ``tesp-api serve`` with the default settings except the ones named (engine off unless said);
  ``api.workers = N`` runs N API processes and the engine process (tesp_api/workers.py).

Figures of the compared servers are taken in alternating rounds (bare, serve, bare, serve...) so
both see the same background load; the median round is reported, and the server's CPU time per
request (the process and its children, from /proc via psutil), which other load hardly moves.

What is printed, each with its goal:

1. create vs bare POST, one core, access log on (the default) and off: >= 50 %;
2. create with the engine busy (polling 200 running tasks on a real local Pulsar) vs engine off,
   1 API process + engine process: >= 80 %; the same with the engine in the API's process for
   contrast;
3. 2 API processes vs 1, engine off: >= 1.6x;
4. GET task (MINIMAL) p50 vs bare GET p50: <= 1.3x; list MINIMAL of 256 at N tasks, first and deep
   page, p50 vs bare GET p50: <= 3x; BASIC and FULL pages for information; memory per 256-task FULL
   page (tracemalloc peak of store.list + page rendering);
5. the same create/GET/list figures against the MongoDB adapter through mongoeco (an emulator in
   Python: its figures say nothing about a real MongoDB), and against a real MongoDB when
   TESP_TEST_MONGODB_URI is set.

    .venv/bin/python benchmarks/bench_api.py                 # full run (~10 min)
    .venv/bin/python benchmarks/bench_api.py --quick         # small numbers, smoke test
    .venv/bin/python benchmarks/bench_api.py --only create,reads --no-mongo
    .venv/bin/python benchmarks/bench_api.py --only workers --nice -10   # 3. alone (no Pulsar)
    TESP_TEST_MONGODB_URI=mongodb://user:pw@host:27017/ .venv/bin/python benchmarks/bench_api.py --only mongo
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from fastapi import FastAPI, Request

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tesp_api.store.port import ListQuery, TaskStore  # noqa: E402
from tesp_api.tes.ids import new_task_id  # noqa: E402
from tesp_api.tes.models import TesExecutor, TesInput, TesTask  # noqa: E402

TES = "/ga4gh/tes/v1"
START_TIMEOUT = 120.0
CREATE_BODY: dict[str, Any] = {
    "name": "bench",
    "tags": {"project": "bench"},
    "executors": [{"image": "alpine", "command": ["echo", "hello"]}],
}
CPUS = os.cpu_count() or 1
SERVER_CPU = {0}
CLIENT_CPU = CPUS - 1
NICE = [0]  # --nice: servers and wrk at this niceness (negative, as root: less noise from other load)


# -- the load generator ------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path; installed from Debian with apt-get when missing (as root, or with sudo -n)."""
    found = shutil.which("wrk")
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("(wrk not found: apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(
        [*prefix, "apt-get", "install", "-y", "wrk"], env=env, capture_output=True, check=False
    ).returncode:
        subprocess.run([*prefix, "apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run([*prefix, "apt-get", "install", "-y", "wrk"], env=env, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    return found


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


@dataclass
class Load:
    """One wrk run against one server."""

    rate: float  # requests per second
    requests: int
    p50: float  # seconds
    p99: float
    cpu_ms: float  # server CPU (process and children) per request

    def __str__(self) -> str:
        # busy: cores the server kept busy (req/s x CPU per request). Under 1 for a server pinned to
        # one core: it waited (other load on its core, or its own waits: a create's fsync).
        return (
            f"{self.rate:8.0f} req/s  p50 {self.p50 * 1000:7.3f} ms  p99 {self.p99 * 1000:7.2f} ms"
            f"  CPU {self.cpu_ms:6.3f} ms/req  busy {self.rate * self.cpu_ms / 1000:4.2f}"
        )


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live children."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def wrk(
    wrk_path: str,
    url: str,
    pid: int,
    *,
    seconds: float,
    connections: int,
    body: dict[str, Any] | None,
    tmp: Path,
) -> Load:
    script = tmp / "post.lua"
    argv = [
        "nice",
        "-n",
        str(NICE[0]),
        "taskset",
        "-c",
        str(CLIENT_CPU),
        wrk_path,
        "-t",
        "1",
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
    ]
    argv += ["--latency", "--timeout", "30s"]
    if body is not None:
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        argv += ["-s", str(script)]
    cpu0 = tree_cpu(pid)
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu(pid) - cpu0
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or requests == 0:
        raise RuntimeError(f"wrk {url}: {bad.group(0) if bad else 'no requests'}\n{out}")
    if errors:
        print(f"    (wrk {url}: socket errors {errors.group(1)})")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return Load(rate, requests, p50, p99, cpu / requests * 1000)


def median_load(loads: list[Load]) -> Load:
    ordered = sorted(loads, key=lambda x: x.rate)
    mid = ordered[len(ordered) // 2]
    return Load(
        mid.rate,
        mid.requests,
        statistics.median(x.p50 for x in loads),
        statistics.median(x.p99 for x in loads),
        statistics.median(x.cpu_ms for x in loads),
    )


# -- servers -------------------------------------------------------------------------------------


def serve_bare(port: int, access_log: bool) -> None:
    """The baseline: FastAPI + uvicorn with the options tesp-api serve uses."""
    import uvicorn

    from tesp_api.config.settings import LoggingSettings, Settings
    from tesp_api.service import configure_logging, uvicorn_config

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
    settings = Settings.model_validate({"api": {"host": "127.0.0.1", "port": port, "access_log": access_log}})
    uvicorn.Server(uvicorn_config(app, settings)).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    label: str
    base: str
    pid: int


@contextlib.contextmanager
def server_process(
    label: str, argv: list[str], env: dict[str, str], ready_path: str, log_path: Path, *, pin: bool
) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [a.replace("{port}", str(port)) for a in argv]

    def pin_cpu() -> None:
        if pin:
            os.sched_setaffinity(0, SERVER_CPU)
        if NICE[0]:
            os.nice(NICE[0])

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pin_cpu,  # noqa: PLW1509 - the benchmark has no threads when it starts servers
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited with {process.returncode}; see {log_path}")
            try:
                if httpx.get(base + ready_path, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} not ready after {START_TIMEOUT}s; see {log_path}")
            time.sleep(0.2)
        yield Server(label, base, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def bare_server(tmp: Path, *, access_log: bool) -> contextlib.AbstractContextManager[Server]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "{port}"]
    if not access_log:
        argv.append("--no-access-log")
    label = "bare" + ("" if access_log else " (no access log)")
    return server_process(
        label, argv, dict(os.environ), "/bare", tmp / f"bare-{int(access_log)}.log", pin=True
    )


def api_server(
    tmp: Path, label: str, env: dict[str, str], *, pin: bool, settings_toml: str = ""
) -> contextlib.AbstractContextManager[Server]:
    slug = re.sub(r"\W+", "-", label)
    settings = tmp / f"settings-{slug}.toml"
    settings.write_text("[default]\n" + settings_toml)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "FASTAPI_PROFILE"}
    full_env = {
        **clean,
        "TESP_API_ENGINE__ENABLED": "false",
        "TESP_API_ENGINE__WORK_DIR": str(tmp / f"work-{slug}"),
        **env,
    }
    argv = [sys.executable, "-m", "tesp_api", "serve", "--settings", str(settings), "--host", "127.0.0.1"]
    argv += ["--port", "{port}"]
    return server_process(label, argv, full_env, f"{TES}/service-info", tmp / f"api-{slug}.log", pin=pin)


# -- data ------------------------------------------------------------------------------------------


async def bulk_load(store: TaskStore, count: int, template: TesTask, chunk: int = 500) -> list[str]:
    """Create ``count`` tasks through the store adapter (concurrently, so group commit applies)."""
    ids: list[str] = []
    for start in range(0, count, chunk):
        tasks = [template.model_copy(update={"id": new_task_id()}) for _ in range(min(chunk, count - start))]
        records = await asyncio.gather(*(store.create(t, None) for t in tasks))
        ids += [r.id for r in records]
    return ids


BULK = TesTask(
    name="bulk",
    tags={"project": "bulk"},
    inputs=[TesInput(path="/data/in.txt", content="x" * 200)],
    executors=[TesExecutor(image="alpine", command=["echo", "hi"])],
)


async def deep_page_token(store: TaskStore, total: int, page_size: int, step: int) -> str | None:
    """A token (as the API issues them) for a full page near the end of the unfiltered list."""
    token: str | None = None
    deep: str | None = None
    seen = 0
    while True:
        page = await store.list(ListQuery(page_size=step, page_token=token))
        seen += len(page.records)
        if page.next_page_token is None or total - seen < page_size:
            return deep
        deep = token = page.next_page_token


async def full_page_memory(store: TaskStore, page_size: int) -> tuple[float, int]:
    """Peak bytes allocated (tracemalloc) to read and render one FULL page, and the answer's size."""
    from tesp_api.api.pages import page_response
    from tesp_api.tes.models import TesView

    await store.list(ListQuery(page_size=page_size))  # warm caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        page = await store.list(ListQuery(page_size=page_size))
        body = page_response(page, TesView.FULL).body
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, len(body)


# -- the comparisons ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    wrk: str
    results: list[tuple[str, float, str, bool]]  # (what, value, goal text, met)

    def record(self, what: str, value: float, goal: str, met: bool) -> None:
        self.results.append((what, value, goal, met))
        print(f"  => {what}: {value:.2f} (goal {goal}) {'MET' if met else 'NOT MET'}", flush=True)


def alternate(ctx: Ctx, runs: list[tuple[Server, str, dict[str, Any] | None, int]]) -> list[Load]:
    """Rounds of each (server, path, body, connections) in turn; the median round of each."""
    seen: list[list[Load]] = [[] for _ in runs]
    for r in range(ctx.args.rounds):
        for (server, path, body, conns), loads in zip(runs, seen, strict=True):
            load = wrk(
                ctx.wrk,
                server.base + path,
                server.pid,
                seconds=ctx.args.seconds,
                connections=conns,
                body=body,
                tmp=ctx.tmp,
            )
            loads.append(load)
            print(f"    round {r + 1} {server.label:38s} {path.split('?')[0][:28]:28s} {load}", flush=True)
    return [median_load(loads) for loads in seen]


def compare_create(ctx: Ctx, sqlite_path: Path) -> None:
    print("\n## 1. create vs bare POST, each server pinned to one core (CPU 0), wrk on CPU", CLIENT_CPU)
    c = ctx.args.clients
    db = {"TESP_API_DB__SQLITE_PATH": str(sqlite_path)}
    for access_log in (True, False):
        env = {**db, "TESP_API_API__ACCESS_LOG": str(access_log).lower()}
        label = "serve, engine off" + ("" if access_log else ", no access log")
        with (
            bare_server(ctx.tmp, access_log=access_log) as bare,
            api_server(ctx.tmp, label, env, pin=True) as api,
        ):
            b, a = alternate(ctx, [(bare, "/bare", CREATE_BODY, c), (api, f"{TES}/tasks", CREATE_BODY, c)])
        log_text = "access log on (default)" if access_log else "access log off"
        print(f"  bare POST {b}\n  create    {a}")
        ctx.record(
            f"create / bare POST, req/s, {log_text}", a.rate / b.rate, ">= 0.50", a.rate / b.rate >= 0.5
        )
        ctx.record(
            f"bare CPU / create CPU per request, {log_text}",
            b.cpu_ms / a.cpu_ms,
            ">= 0.50",
            b.cpu_ms / a.cpu_ms >= 0.5,
        )


@contextlib.contextmanager
def busy_engine_store(ctx: Ctx) -> Iterator[tuple[dict[str, str], Any]]:
    """A local Pulsar (one job slot) and a store with N tasks the engine will drive: one runs
    ``sleep 3600``, the others wait queued in Pulsar; the engine polls them all."""
    from tesp_api.local import LocalPulsar

    n = ctx.args.busy_tasks
    state = ctx.tmp / "busy"
    state.mkdir(exist_ok=True)
    pulsar = LocalPulsar(state / "pulsar", num_concurrent_jobs=1)
    pulsar.start()
    try:
        path = state / "tasks.sqlite3"

        async def load() -> None:
            from tesp_api.store.sqlite import SqliteTaskStore

            store = SqliteTaskStore(str(path))
            await store.open()
            sleeper = TesTask(executors=[TesExecutor(image="alpine", command=["sleep", "3600"])])
            await bulk_load(store, n, sleeper, chunk=100)
            await store.close()

        asyncio.run(load())
        env = {
            "TESP_API_DB__SQLITE_PATH": str(path),
            "TESP_API_PULSAR__URL": pulsar.url,
            "TESP_API_RUNTIME__TYPE": "bwrap",
            "TESP_API_ENGINE__MAX_RUNNING_TASKS": str(n),  # the creates of the benchmark stay QUEUED
            "TESP_API_PULSAR__STATUS__POLL_INTERVAL": str(ctx.args.poll_interval),
            "TESP_API_LOGGING__LEVEL": "WARNING",
        }
        yield env, path
    finally:
        pulsar.stop(timeout=5.0)


def wait_busy(server: Server, path: Path, n: int) -> float:
    """Seconds until the engine drives all n tasks (INITIALIZING/RUNNING in the store)."""
    import sqlite3

    started = time.monotonic()
    while time.monotonic() - started < 600:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            (driven,) = conn.execute(
                "SELECT count(*) FROM tasks WHERE state IN ('INITIALIZING', 'RUNNING') AND lease_owner IS NOT NULL"
            ).fetchone()
        if driven >= n:
            time.sleep(5)  # past the fast first polls, at the steady interval
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"the engine of {server.label} did not take up {n} tasks in 600 s")


def compare_engine(ctx: Ctx) -> None:
    c = ctx.args.clients
    n = ctx.args.busy_tasks
    print(
        f"\n## 2. create with the engine busy ({n} tasks polled every {ctx.args.poll_interval:g} s) vs engine off"
    )
    print("   (no pinning: the API processes, the engine process, Pulsar and wrk share the machine)")
    results: dict[str, Load] = {}
    with busy_engine_store(ctx) as (env, path):
        for workers in (1, 0):
            label = f"serve, workers={workers}, engine busy"
            busy_env = {**env, "TESP_API_ENGINE__ENABLED": "true", "TESP_API_API__WORKERS": str(workers)}
            off_env = {
                "TESP_API_DB__SQLITE_PATH": str(ctx.tmp / f"off-{workers}.sqlite3"),
                "TESP_API_API__WORKERS": str(workers),
            }
            with api_server(ctx.tmp, label, busy_env, pin=False) as busy:
                took = wait_busy(busy, path, n)
                print(f"    (engine driving {n} tasks after {took:.0f} s)")
                with api_server(ctx.tmp, f"serve, workers={workers}, engine off", off_env, pin=False) as off:
                    o, b = alternate(
                        ctx, [(off, f"{TES}/tasks", CREATE_BODY, c), (busy, f"{TES}/tasks", CREATE_BODY, c)]
                    )
            results[f"off{workers}"], results[f"busy{workers}"] = o, b
            print(f"  engine off  {o}\n  engine busy {b}")
            where = (
                "engine in its own process (api.workers=1)"
                if workers
                else "engine in the API process (api.workers=0)"
            )
            ctx.record(
                f"create engine busy / engine off, {where}",
                b.rate / o.rate,
                ">= 0.80",
                b.rate / o.rate >= 0.8,
            )


def compare_workers(ctx: Ctx) -> None:
    c = ctx.args.clients
    print("\n## 3. 2 API processes vs 1, engine off")
    w = {}
    with (
        api_server(
            ctx.tmp,
            "serve, workers=1",
            {"TESP_API_API__WORKERS": "1", "TESP_API_DB__SQLITE_PATH": str(ctx.tmp / "w1.sqlite3")},
            pin=False,
        ) as one,
        api_server(
            ctx.tmp,
            "serve, workers=2",
            {"TESP_API_API__WORKERS": "2", "TESP_API_DB__SQLITE_PATH": str(ctx.tmp / "w2.sqlite3")},
            pin=False,
        ) as two,
    ):
        w["create1"], w["create2"], w["get1"], w["get2"] = alternate(
            ctx,
            [
                (one, f"{TES}/tasks", CREATE_BODY, c),
                (two, f"{TES}/tasks", CREATE_BODY, c),
                (one, f"{TES}/service-info", None, c),
                (two, f"{TES}/service-info", None, c),
            ],
        )
    print(f"  create, 1 process  {w['create1']}\n  create, 2 processes {w['create2']}")
    print(f"  service-info, 1    {w['get1']}\n  service-info, 2    {w['get2']}")
    ratio = w["create2"].rate / w["create1"].rate
    ctx.record("create, 2 API processes / 1", ratio, ">= 1.60", ratio >= 1.6)
    ratio = w["get2"].rate / w["get1"].rate
    ctx.record("GET service-info (no store), 2 API processes / 1", ratio, ">= 1.60", ratio >= 1.6)


def compare_reads(
    ctx: Ctx, label: str, server: Server, bare: Server, ids: list[str], deep: str | None
) -> None:
    size = ctx.args.page_size
    first = f"{TES}/tasks?page_size={size}"
    deep_url = f"{first}&page_token={deep}" if deep else first
    task = ids[len(ids) // 2]
    runs = [
        (bare, "/bare", None, 1),
        (server, f"{TES}/tasks/{task}", None, 1),
        (server, first, None, 1),
        (server, deep_url, None, 1),
        (server, f"{first}&view=BASIC", None, 1),
        (server, f"{first}&view=FULL", None, 1),
        (server, f"{TES}/tasks/{task}?view=FULL", None, 1),
    ]
    bare_get, get, list_first, list_deep, list_basic, list_full, get_full = alternate(ctx, runs)
    print(f"  bare GET              {bare_get}")
    for name, load in (
        ("GET task (MINIMAL)", get),
        ("GET task (FULL)", get_full),
        (f"list {size} MINIMAL, first", list_first),
        (f"list {size} MINIMAL, deep", list_deep),
        (f"list {size} BASIC, first", list_basic),
        (f"list {size} FULL, first", list_full),
    ):
        print(f"  {name:22s}{load}   p50 = {load.p50 / bare_get.p50:5.2f}x bare GET")
    ctx.record(
        f"{label}: GET task p50 / bare GET p50",
        get.p50 / bare_get.p50,
        "<= 1.3",
        get.p50 / bare_get.p50 <= 1.3,
    )
    for name, load in (("first", list_first), ("deep", list_deep)):
        r = load.p50 / bare_get.p50
        ctx.record(f"{label}: list MINIMAL {size}, {name} page, p50 / bare GET p50", r, "<= 3", r <= 3)


def run_sqlite_reads(ctx: Ctx) -> Path:
    from tesp_api.store.sqlite import SqliteTaskStore

    path = ctx.tmp / "tasks.sqlite3"
    n = ctx.args.tasks

    async def load() -> tuple[list[str], str | None, float, tuple[float, int]]:
        store = SqliteTaskStore(str(path))
        await store.open()
        started = time.perf_counter()
        ids = await bulk_load(store, n, BULK)
        took = time.perf_counter() - started
        token = await deep_page_token(store, n, ctx.args.page_size, step=2047)
        memory = await full_page_memory(store, ctx.args.page_size)
        await store.close()
        return ids, token, took, memory

    ids, token, took, (peak, size) = asyncio.run(load())
    print(f"\n(bulk load of {n} tasks through SqliteTaskStore.create: {took:.1f} s, {n / took:.0f} tasks/s)")
    print(f"\n## 4. reads, embedded store (SQLite), {n} tasks stored, one connection (wrk -c 1)")
    print(
        f"  memory per {ctx.args.page_size}-task FULL page (store.list + rendering, tracemalloc peak):"
        f" {peak / 2**20:.2f} MiB for a {size / 2**10:.0f} KiB answer ({peak / ctx.args.page_size / 1024:.1f} KiB per task)"
    )
    env = {"TESP_API_DB__SQLITE_PATH": str(path)}
    with (
        bare_server(ctx.tmp, access_log=True) as bare,
        api_server(ctx.tmp, "serve, engine off", env, pin=True) as api,
    ):
        compare_reads(ctx, "SQLite", api, bare, ids, token)
    return path


def run_mongo(ctx: Ctx, uri: str, label: str) -> None:
    from tesp_api.store.mongo import MongoTaskStore

    database = f"tesp_bench_{uuid.uuid4().hex[:8]}"
    n = ctx.args.mongo_tasks

    async def load() -> tuple[list[str], str | None, tuple[float, int]]:
        store = MongoTaskStore(uri, database=database, collection="tasks")
        await store.open()
        ids = await bulk_load(store, n, BULK, chunk=50)
        token = await deep_page_token(store, n, ctx.args.page_size, step=ctx.args.page_size)
        memory = await full_page_memory(store, ctx.args.page_size)
        await store.close()
        return ids, token, memory

    async def drop() -> None:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(uri)
        with contextlib.suppress(Exception):
            await client.drop_database(database)
        await client.close()

    try:
        ids, token, (peak, size) = asyncio.run(load())
        print(f"\n## 5. {label}, {n} tasks stored")
        print(
            f"  memory per {ctx.args.page_size}-task FULL page: {peak / 2**20:.2f} MiB ({size / 2**10:.0f} KiB answer)"
        )
        env = {"TESP_API_DB__MONGODB_URI": uri, "TESP_API_DB__MONGODB_DATABASE": database}
        with (
            bare_server(ctx.tmp, access_log=True) as bare,
            api_server(ctx.tmp, f"serve, {label}", env, pin=True) as api,
        ):
            b, a = alternate(
                ctx,
                [
                    (bare, "/bare", CREATE_BODY, ctx.args.clients),
                    (api, f"{TES}/tasks", CREATE_BODY, ctx.args.clients),
                ],
            )
            print(f"  bare POST {b}\n  create    {a}")
            ctx.record(
                f"{label}: create / bare POST, req/s", a.rate / b.rate, ">= 0.50", a.rate / b.rate >= 0.5
            )
            compare_reads(ctx, label, api, bare, ids, token)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(drop())


def main(args: argparse.Namespace) -> None:
    NICE[0] = args.nice
    only = set(args.only.split(",")) if args.only else {"create", "engine", "reads", "mongo"}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_name:
        ctx = Ctx(args, Path(tmp_name), ensure_wrk(), [])
        load0 = os.getloadavg()
        print(
            f"python {sys.version.split()[0]}, {CPUS} CPUs, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f},"
            f" wrk: {args.seconds:g} s per round, {args.rounds} alternating rounds, {args.clients} connections, niceness {args.nice}",
            flush=True,
        )
        path = ctx.tmp / "create.sqlite3"
        if "reads" in only:
            path = run_sqlite_reads(ctx)
        if "create" in only:
            compare_create(ctx, path)
        if "engine" in only:
            compare_engine(ctx)
        if "workers" in only or "engine" in only:
            compare_workers(ctx)
        if "mongo" in only and args.mongo:
            from tests.services.mongoeco import MongoUnavailable, mongoeco_server

            try:
                with mongoeco_server() as uri:
                    run_mongo(ctx, uri, "MongoDB adapter via mongoeco (EMULATOR figures, not a real MongoDB)")
            except MongoUnavailable as exc:
                print(f"\n(mongoeco skipped: {exc})")
            real = os.environ.get("TESP_TEST_MONGODB_URI")
            if real:
                run_mongo(ctx, real, "MongoDB adapter on TESP_TEST_MONGODB_URI (real MongoDB)")
        load1 = os.getloadavg()
        print(
            f"\n## Ratios against the goals (load average at the end {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f})"
        )
        for what, value, goal, met in ctx.results:
            print(f"  {'MET    ' if met else 'NOT MET'}  {value:6.2f}  goal {goal:8s} {what}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--no-access-log", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks stored in the embedded store")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--clients", type=int, default=32, help="wrk connections for throughput")
    parser.add_argument("--page-size", type=int, default=256)
    parser.add_argument("--busy-tasks", type=int, default=200, help="tasks the busy engine polls")
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="pulsar.status.poll_interval when busy"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of servers and wrk (e.g. -10 as root on a shared machine)",
    )
    parser.add_argument(
        "--only", help="comma list of: create, engine (2. and 3.), workers (3. only), reads, mongo"
    )
    parser.add_argument("--no-mongo", dest="mongo", action="store_false", help="skip the MongoDB adapter")
    parser.add_argument("--mongo-tasks", type=int, default=2000, help="tasks stored in mongoeco / MongoDB")
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seconds, args.rounds, args.busy_tasks, args.mongo_tasks = 3000, 2.0, 1, 20, 300
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_bare:
        serve_bare(arguments.serve_bare, not arguments.no_access_log)
    else:
        main(arguments)
