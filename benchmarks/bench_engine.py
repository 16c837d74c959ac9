"""Engine benchmark: tesp-api + Pulsar against Pulsar alone, all on 127.0.0.1, bounded.

1. Latency from POST /tasks to COMPLETE for a trivial task (`true`), median of several, against
   the same command sent straight to the same Pulsar over its REST API (setup, upload the script,
   submit, poll status until complete).
2. Time to finish 200 trivial tasks submitted at once, against 200 jobs sent straight to Pulsar.
3. The engine's CPU time per 1,000 status polls with 25..200 tasks running at once (in-process
   engine + embedded store; Pulsar holds the jobs queued behind one long job, so every task stays
   RUNNING and is polled): it must stay flat, not grow with the number of tasks.

What is compared (the same on both sides, so the ratio is tesp-api's own overhead):

* the same command: the executor's `true` under the same runtime (`--runtime bwrap`: the same
  bubblewrap sandbox; `--runtime docker|podman`: the same `docker run`/`podman run` of
  local/busybox:1, on a private dockerd or podman store as the test suite starts them), the argv
  tesp-api's runtime builder makes, sent to Pulsar as a one-line job script (setup, upload, submit);
* the same polling of Pulsar: the direct client polls each job on the engine's own schedule (first
  after 50 ms, then 1.5x longer each time up to pulsar.status.poll_interval = 0.5 s), restarting
  the fast polls when Pulsar reports the job running, as the engine does;
* tesp-api's side ends at the task's recorded `end_time` (set as the engine writes the final
  state), not when the client's next GET happens to see it: the TES client checks for the end with
  one `GET /tasks?view=MINIMAL` per second during the burst (`GET /tasks/{id}` every 50 ms for the
  latency runs), so it adds neither delay nor load per task.

What only tesp-api does: the store (claim, lease, CAS per state, logs), the job script's
bookkeeping (start/end times, exit code, log tails, output manifest, read back after the job), and
the DELETE of the Pulsar job directory (the direct client deletes its jobs after the clock stops).
Prints a Markdown block for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_engine.py [--tasks 200] [--latency-runs 10] [--runtime bwrap]
    .venv/bin/python benchmarks/bench_engine.py --runtime docker --cpu-sizes ''   # docker row (podman alike)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime_side import group_cpu, private_runtime, real_python, session_cpu
from tesp_api.local import LocalPulsar, free_port

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
POLL = 0.05  # the TES client's polling (one request for all tasks during the burst)
POLL_INTERVAL = 0.5  # pulsar.status.poll_interval of the engine; the direct client uses the same
CONCURRENT_JOBS = 8
DAEMON: dict[str, int] = {}  # "sid": the private dockerd's session (its own: start_new_session), when docker


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def real_runtime(kind: str, tmp: Path, runner_python: str) -> Iterator[dict[str, Any]]:
    """The ``runtime`` settings section for ``kind``; docker and podman on a private daemon/store
    with local/busybox:1 imported (runtime_side.private_runtime), stopped at the end."""
    if kind == "bwrap":
        yield {"type": "bwrap", "runner_python": runner_python}
        return
    with private_runtime(kind, tmp) as (cli, env, sid):
        if sid is not None:
            DAEMON["sid"] = sid
        yield {"type": kind, f"{kind}_bin": cli, "env": env, "runner_python": runner_python}


def image_for(kind: str) -> str:
    return "alpine" if kind == "bwrap" else "local/busybox:1"  # bwrap ignores the image


NAME = "tes-benchjob-0"


def direct_command(runtime: dict[str, Any]) -> str:
    """The shell line tesp-api's runtime builder makes for the executor ``true`` (container name
    ``NAME``, replaced per job), with the runtime CLI's environment (``runtime.env``) exported first."""
    from tesp_api.config.settings import RuntimeSettings
    from tesp_api.engine.runtimes import build_runtime
    from tesp_api.engine.runtimes.base import ExecutorRun
    from tesp_api.engine.shell import render

    rt = build_runtime(RuntimeSettings.model_validate(runtime))
    line = render(rt.command(ExecutorRun(name=NAME, image=image_for(runtime["type"]), command=["true"])))
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in runtime.get("env", {}).items())
    return exports + line


# ---- straight to Pulsar ---------------------------------------------------------------------------
async def _again(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """An idempotent request, asked again after a transport error (a gunicorn worker restarted under
    load), as the engine's REST backend does."""
    for attempt in range(5):
        try:
            return await send()
        except httpx.TransportError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


async def pulsar_job(client: httpx.AsyncClient, job_id: str, command: str) -> None:
    await _again(lambda: client.post("/jobs", params={"job_id": job_id}))  # setup: same job id, same answer
    command = command.replace(NAME, f"tes-{job_id}-0")  # a container name of its own per job
    path = (
        await _again(
            lambda: client.post(
                f"/jobs/{job_id}/files",
                params={"name": "job.sh", "type": "tool"},
                content=f"{command}\n".encode(),
            )
        )
    ).json()["path"]
    for _ in range(5):
        try:
            await client.post(f"/jobs/{job_id}/submit", params={"command_line": f"bash {path}"})
            return
        except (
            httpx.TransportError
        ):  # submitted or not? Pulsar says "preprocessing" until it is (as the engine asks)
            await asyncio.sleep(1.0)
            status = (await _again(lambda: client.get(f"/jobs/{job_id}/status"))).json()["status"]
            if status != "preprocessing":
                return
    raise RuntimeError(f"{job_id}: submit failed 5 times")


async def pulsar_wait(client: httpx.AsyncClient, job_id: str) -> None:
    """Polls like the engine's driver: 50 ms, x1.5 up to POLL_INTERVAL, fast again once running."""
    from tesp_api.engine.driver import FIRST_POLL

    delay, last = FIRST_POLL, ""
    while True:
        try:
            status = (await client.get(f"/jobs/{job_id}/status")).json()["status"]
        except httpx.TransportError:  # a gunicorn worker restarted under load: ask again, as the engine does
            await asyncio.sleep(delay)
            continue
        if status == "complete":
            return
        if status != last and status == "running":
            delay = FIRST_POLL
        last = status
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, POLL_INTERVAL)


async def pulsar_latency(url: str, runs: int, command: str) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(runs):
            started = time.perf_counter()
            job = f"lat-{i}-{os.getpid()}-{time.monotonic_ns()}"
            await pulsar_job(client, job, command)
            await pulsar_wait(client, job)
            out.append(time.perf_counter() - started)
            await _again(partial(client.delete, f"/jobs/{job}"))
    return out


async def pulsar_burst(url: str, n: int, command: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        started = time.perf_counter()
        jobs = [f"burst-{i}-{os.getpid()}" for i in range(n)]
        await asyncio.gather(*(pulsar_job(client, j, command) for j in jobs))
        await asyncio.gather(*(pulsar_wait(client, j) for j in jobs))
        elapsed = time.perf_counter() - started
        deleted = time.perf_counter()
        await asyncio.gather(*(_again(partial(client.delete, f"/jobs/{j}")) for j in jobs))
        print(
            f"direct: {n} DELETEs after the clock took {time.perf_counter() - deleted:.2f} s", file=sys.stderr
        )
    return elapsed


# ---- through tesp-api -------------------------------------------------------------------------------
TRIVIAL: dict[str, Any] = {"executors": [{"image": "alpine", "command": ["true"]}]}  # image: see main()


async def tes_wait(client: httpx.AsyncClient, task_id: str, poll: float = POLL) -> str:
    while True:
        state = (await client.get(f"/tasks/{task_id}")).json()["state"]
        if state in FINAL:
            return str(state)
        await asyncio.sleep(poll)


async def tes_latency(api: str, runs: int, tasks: list[dict[str, Any]] | None = None) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for _ in range(runs):
            started = time.time()
            task_id = (await client.post("/tasks", json=TRIVIAL)).json()["id"]
            state = await tes_wait(client, task_id)
            task = (await client.get(f"/tasks/{task_id}", params={"view": "FULL"})).json()
            assert state == "COMPLETE", (state, task["logs"][-1].get("system_logs"))
            out.append(_ts(task["logs"][-1]["end_time"]) - started)
            if tasks is not None:
                tasks.append(task)
    return out


def latency_rounds(url: str, api: str, runs: int, command: str) -> tuple[list[float], list[float]]:
    """Direct and tesp-api latency runs alternated one by one, so both see the same load (the shared
    machine's load can change several-fold within a minute); prints where tesp-api's time went."""
    direct: list[float] = []
    tes: list[float] = []
    tasks: list[dict[str, Any]] = []
    for _ in range(runs):
        direct += asyncio.run(pulsar_latency(url, 1, command))
        tes += asyncio.run(tes_latency(api, 1, tasks))
    print_breakdown(tasks, "latency")
    print(
        "latency runs (direct, tesp-api): "
        + ", ".join(f"{d:.3f}/{t:.3f}" for d, t in zip(direct, tes, strict=True)),
        file=sys.stderr,
    )
    return direct, tes


async def tes_burst(api: str, n: int, staging: Path) -> float:
    """Ends at the last task's end_time; returns once tesp-api has also deleted every Pulsar job
    directory (it defers that housekeeping while jobs run), so the next burst starts on a quiet
    Pulsar, as the direct side's bursts do after their DELETEs."""
    async with httpx.AsyncClient(base_url=api, timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        started = time.time()
        ids = {
            r.json()["id"]
            for r in await asyncio.gather(*(client.post("/tasks", json=TRIVIAL) for _ in range(n)))
        }
        states: dict[str, str] = {}
        while len(states) < n:
            await asyncio.sleep(1.0)
            page = (await client.get("/tasks", params={"view": "MINIMAL", "page_size": 2047})).json()
            states.update(
                {t["id"]: t["state"] for t in page.get("tasks", []) if t["id"] in ids and t["state"] in FINAL}
            )
        full = [
            t
            for t in (await client.get("/tasks", params={"view": "FULL", "page_size": 2047})).json()["tasks"]
            if t["id"] in ids
        ]
        failed = [t["logs"][-1].get("system_logs") for t in full if t["state"] != "COMPLETE"]
        assert not failed, f"{len(failed)} tasks not COMPLETE, e.g. {failed[0]}"
    print_breakdown(full)
    deadline = time.monotonic() + 120
    while any((staging / t).exists() for t in ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return max(_ts(t["logs"][-1]["end_time"]) for t in full) - started


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def print_breakdown(tasks: list[dict[str, Any]], what: str = "burst") -> None:
    """Where a task's time went, from its own log (medians; stderr, not the Markdown)."""
    phases: dict[str, list[float]] = {
        "created -> claimed": [],
        "claimed -> executor start": [],
        "executor start -> end": [],
        "executor end -> final": [],
    }
    for t in tasks:
        lg = t["logs"][-1]
        ex = lg["logs"][0]
        created, claimed = _ts(t["creation_time"]), _ts(lg["start_time"])
        ex_start, ex_end, final = _ts(ex["start_time"]), _ts(ex["end_time"]), _ts(lg["end_time"])
        for key, value in zip(
            phases, (claimed - created, ex_start - claimed, ex_end - ex_start, final - ex_end), strict=True
        ):
            phases[key].append(value)
    for key, values in phases.items():
        print(
            f"{what} task phase {key}: median {statistics.median(values):.3f} s, max {max(values):.3f} s",
            file=sys.stderr,
        )


def start_serve(tmp: Path, pulsar_url: str, runtime: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    lines = ["[default.runtime]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in runtime.items() if k != "env"]
    lines += ["[default.runtime.env]"] + [f"{k} = {json.dumps(v)}" for k, v in runtime.get("env", {}).items()]
    (tmp / "settings.toml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_")}
    env.update(
        {
            "TESP_API_SETTINGS": str(tmp / "settings.toml"),
            "TESP_API_DB__SQLITE_PATH": str(tmp / "tasks.sqlite3"),
            "TESP_API_PULSAR__URL": pulsar_url,
            "TESP_API_PULSAR__STATUS__POLL_INTERVAL": str(POLL_INTERVAL),
            "TESP_API_ENGINE__WORK_DIR": str(tmp / "work"),
            "TESP_API_ENGINE__CLAIM_INTERVAL": "0.05",
            "TESP_API_LOGGING__LEVEL": "WARNING",
        }
    )
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tesp_api", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/service-info", timeout=1).status_code == 200:
                return proc, url + "/ga4gh/tes/v1"
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tesp-api serve did not start")


# ---- engine CPU per poll ----------------------------------------------------------------------------
async def engine_cpu(
    pulsar: LocalPulsar, tmp: Path, sizes: list[int], window: float
) -> list[tuple[int, float, float]]:
    from tesp_api.config.settings import Settings
    from tesp_api.engine import Engine
    from tesp_api.store.sqlite import SqliteTaskStore
    from tesp_api.tes.ids import new_task_id
    from tesp_api.tes.models import TesTask

    rows = []
    for n in sizes:
        d = tmp / f"cpu-{n}"
        d.mkdir(parents=True, exist_ok=True)
        settings = Settings.model_validate(
            {
                "pulsar": {"url": pulsar.url, "status": {"poll_interval": 0.5}},
                "engine": {"work_dir": str(d / "work"), "claim_interval": 1.0, "lease_seconds": 30},
                "runtime": {"type": "bwrap"},
            }
        )
        store = SqliteTaskStore(str(d / "tasks.sqlite3"))
        await store.open()
        # One job occupies Pulsar's single slot; the others wait queued in Pulsar, RUNNING in TES.
        for _ in range(n):
            t = TesTask.model_validate({"executors": [{"image": "a", "command": ["sleep", "120"]}]})
            t.id = new_task_id()
            await store.create(t, None)
        engine = Engine(settings, store)
        await engine.start()
        while engine.stats["submits"] < n:
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # every task past its fast first polls, at the steady interval
        polls0, cpu0 = engine.stats["polls"], time.process_time()
        await asyncio.sleep(window)
        polls, cpu = engine.stats["polls"] - polls0, time.process_time() - cpu0
        rows.append((n, cpu / polls * 1000, cpu / window))
        for task_id in list(engine._drivers):  # cancel them all, as the API would
            from tesp_api.tes.models import TesState
            from tesp_api.tes.states import CANCELABLE_STATES

            await store.update(task_id, expected=CANCELABLE_STATES, state=TesState.CANCELED)
            engine.notify_cancel(task_id)
        deadline = time.monotonic() + 120
        while engine.running and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await engine.stop()
        await store.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--latency-runs", type=int, default=10)
    ap.add_argument(
        "--burst-runs", type=int, default=2, help="bursts per side, alternating; the median counts"
    )
    ap.add_argument("--cpu-sizes", default="25,50,100,200")
    ap.add_argument("--cpu-window", type=float, default=8.0)
    ap.add_argument(
        "--runtime",
        choices=["bwrap", "docker", "podman"],
        default="bwrap",
        help="docker/podman: a private daemon/store as the test suite starts them",
    )
    ap.add_argument(
        "--runner-python",
        default=None,
        help="runtime.runner_python for tesp-api's jobs (default: /usr/bin/python3, not a shim on PATH)",
    )
    args = ap.parse_args()
    TRIVIAL["executors"][0]["image"] = image_for(args.runtime)
    with (
        tempfile.TemporaryDirectory(prefix="bench-engine-") as tmpdir,
        real_runtime(args.runtime, Path(tmpdir), args.runner_python or real_python()) as runtime,
    ):
        tmp = Path(tmpdir)
        with LocalPulsar(tmp / "pulsar", num_concurrent_jobs=CONCURRENT_JOBS) as pulsar:
            serve, api = start_serve(tmp, pulsar.url, runtime)
            try:
                command = direct_command(runtime)
                direct_lat, tes_lat = latency_rounds(pulsar.url, api, args.latency_runs, command)
                direct_runs, tes_runs, direct_cpu, tes_cpu, direct_pulsar, tes_pulsar = [], [], [], [], [], []
                direct_daemon: list[float] = []
                tes_daemon: list[float] = []
                sid = DAEMON.get("sid")
                assert pulsar.process is not None
                pgid = os.getpgid(pulsar.process.pid)
                for _ in range(args.burst_runs):  # alternating, so the machine's load hits both sides
                    cpu0, pulsar0, daemon0 = time.process_time(), group_cpu(pgid), session_cpu(sid)
                    direct_runs.append(asyncio.run(pulsar_burst(pulsar.url, args.tasks, command)))
                    direct_cpu.append(time.process_time() - cpu0)
                    direct_pulsar.append(group_cpu(pgid) - pulsar0)
                    direct_daemon.append(session_cpu(sid) - daemon0)
                    cpu0, serve0, pulsar0 = time.process_time(), process_cpu(serve.pid), group_cpu(pgid)
                    daemon0 = session_cpu(sid)
                    tes_runs.append(asyncio.run(tes_burst(api, args.tasks, pulsar.staging_directory)))
                    tes_cpu.append(process_cpu(serve.pid) - serve0 + time.process_time() - cpu0)
                    tes_pulsar.append(group_cpu(pgid) - pulsar0)
                    tes_daemon.append(session_cpu(sid) - daemon0)
                print(
                    "bursts (direct, tesp-api, ratio): "
                    + ", ".join(
                        f"{d:.2f} s, {t:.2f} s, {t / d:.2f}"
                        for d, t in zip(direct_runs, tes_runs, strict=True)
                    ),
                    file=sys.stderr,
                )
                direct_burst, tes_burst_s = statistics.median(direct_runs), statistics.median(tes_runs)
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(30)
        sizes = [int(s) for s in args.cpu_sizes.split(",") if s]
        cpu_rows = []
        if sizes:
            with LocalPulsar(tmp / "pulsar-cpu", num_concurrent_jobs=1) as pulsar:
                cpu_rows = asyncio.run(engine_cpu(pulsar, tmp, sizes, args.cpu_window))
    tl, dl = statistics.median(tes_lat), statistics.median(direct_lat)
    print(
        f"## Engine (measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Pulsar {CONCURRENT_JOBS} "
        f"concurrent jobs, {args.runtime})\n"
    )
    print("| measure | tesp-api | Pulsar REST directly | ratio |")
    print("|---|---|---|---|")
    print(
        f"| POST -> COMPLETE, trivial task (median of {args.latency_runs}) | {tl:.3f} s | {dl:.3f} s | {tl / dl:.2f} |"
    )
    print(
        f"| {args.tasks} trivial tasks submitted at once, all finished | {tes_burst_s:.2f} s | {direct_burst:.2f} s "
        f"| {tes_burst_s / direct_burst:.2f} |"
    )
    print(
        f"| CPU of the client side in that burst (tesp-api: serve + TES client) | {statistics.median(tes_cpu):.2f} s "
        f"| {statistics.median(direct_cpu):.2f} s | {statistics.median(tes_cpu) / statistics.median(direct_cpu):.2f} |"
    )
    tp, dp = statistics.median(tes_pulsar), statistics.median(direct_pulsar)
    print(f"| CPU of Pulsar (server and jobs) in that burst | {tp:.2f} s | {dp:.2f} s | {tp / dp:.2f} |")
    if any(direct_daemon):
        td, dd = statistics.median(tes_daemon), statistics.median(direct_daemon)
        print(
            f"| CPU of the runtime's daemon (dockerd, containerd, shims) in that burst | {td:.2f} s | {dd:.2f} s | {td / dd:.2f} |"
        )
        tt = statistics.median([a + b + c for a, b, c in zip(tes_cpu, tes_pulsar, tes_daemon, strict=True)])
        dt = statistics.median(
            [a + b + c for a, b, c in zip(direct_cpu, direct_pulsar, direct_daemon, strict=True)]
        )
        print(
            f"| all CPU of that burst (client side + Pulsar + daemon) | {tt:.2f} s | {dt:.2f} s | {tt / dt:.2f} |"
        )
    if not cpu_rows:
        return
    print("\n| tasks running | engine CPU per 1,000 polls | engine CPU per second |")
    print("|---|---|---|")
    for n, per_k, per_s in cpu_rows:
        print(f"| {n} | {per_k:.3f} s | {per_s * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
