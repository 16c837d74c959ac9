"""What benchmarks/crash_runs.py and benchmarks/replica_runs.py share: real processes, faults, counts.

Every process is a real one on 127.0.0.1 (free ports), started here and stopped by PID:
`tesp-api serve` / `tesp-api worker` children (settings from TESP_API_* only), Pulsar (REST:
pulsar-serve via tesp_api.local.LocalPulsar; AMQP: pulsar-main via tests/services/pulsar_amqp.py),
and, for AMQP, a private RabbitMQ node of this run's own (its own node name, ports and state: the
machine's shared broker is never stopped). Executors run under bubblewrap; each appends one line to
``<markers>/<task name>`` (a host directory bound into every executor), so executions are counted on
the host: a file with two lines is an executor run twice.

Clients: ``clients`` coroutines share the task names; each POSTs with ``Idempotency-Key: <name>``,
retrying (other replica first, when there are several) until it gets an answer. Counted at the end:
answered tasks lost (their id unknown), tasks not final ``final_wait`` seconds after the last fault,
duplicates (two stored tasks with one name), executors run twice, never run, states, SYSTEM_ERROR and
PREEMPTED reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.local import LocalPulsar, free_port
from tests.services.tesp_process import TespProcess as SharedTespProcess

FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def counting_task(name: str, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "executors": [
            {
                "image": "alpine",
                "env": {"MARK": name},
                "command": ["sh", "-c", f'echo run >> "/markers/$MARK"; sleep {seconds}; echo "done $MARK"'],
            }
        ],
    }


# ---- tesp-api processes ---------------------------------------------------------------------------


class TespProcess(SharedTespProcess):
    """`tesp-api serve` (API + engine) or `tesp-api worker` (engine only), restartable on one port,
    with exactly ``env`` (tesp_env's) as its environment; its output in ``<workdir>/<label>.log``."""

    stop_timeout = 30.0

    def __init__(self, kind: str, label: str, workdir: Path, env: dict[str, str]) -> None:
        self.command = kind
        self.serves_http = kind == "serve"
        self.kind = kind
        self.label = label
        self.workdir = workdir
        super().__init__(workdir, workdir / f"{label}.log", env)
        self.env = dict(env)  # tesp_env's as it is (it drops CONTAINER_TYPE, which clean_env keeps)

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)

    def kill9(self) -> None:
        self.kill()


def tesp_env(
    workdir: Path, markers: Path, store: dict[str, str], pulsar: dict[str, str], **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API_") and k != "FASTAPI_PROFILE"}
    env.pop("CONTAINER_TYPE", None)
    env.update(
        {
            "TESP_API_SETTINGS": str(workdir / "settings.toml"),  # absent: defaults + environment
            "TESP_API_PULSAR__STATUS__POLL_INTERVAL": "0.5",
            "TESP_API_ENGINE__CLAIM_INTERVAL": "0.2",
            "TESP_API_ENGINE__LEASE_SECONDS": "6",
            "TESP_API_ENGINE__WORK_DIR": str(workdir / "work"),
            "TESP_API_RUNTIME__TYPE": "bwrap",
            "TESP_API_RUNTIME__EXTRA_ARGS": json.dumps(["--bind", str(markers), "/markers"]),
            "TESP_API_PULSAR__LOST_JOB_DEADLINE": "30",
            "TESP_API_PULSAR__UNREACHABLE_DEADLINE": "300",
            "TESP_API_LOGGING__LEVEL": "INFO",
            **store,
            **pulsar,
            **extra,
        }
    )
    return env


# ---- Pulsar and the broker ------------------------------------------------------------------------


class RestPulsar:
    def __init__(self, state: Path, jobs: int) -> None:
        self.server = LocalPulsar(state, num_concurrent_jobs=jobs)

    def env(self) -> dict[str, str]:
        return {"TESP_API_PULSAR__URL": self.server.url}

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def kill9(self) -> None:
        proc = self.server.process
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)  # gunicorn and its workers; the jobs live on (own groups)
        await asyncio.to_thread(proc.wait, 10)
        self.server.process = None

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop, 3.0)


class PrivateBroker:
    """A RabbitMQ node of this run's own (node name, AMQP and distribution ports, state directory),
    as /work/shared/notes/rabbitmq.md starts one; stop_app/start_app for the broker fault."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.node = f"hc{os.getpid()}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (base / "home").mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        self.env = dict(
            os.environ,
            HOME=str(base / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # The script itself: /usr/sbin/rabbitmqctl switches to the rabbitmq user (another HOME,
            # another Erlang cookie) and cannot reach a node started with this HOME.
            ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        subprocess.run(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server", "-detached"], env=self.env, check=False, timeout=60
        )
        self._ctl("await_startup")
        self._wait()

    def _wait(self, timeout: float = 120) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.3)
        raise RuntimeError("private RabbitMQ did not start")

    def stop_app(self) -> None:
        done = self._ctl("stop_app")
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl stop_app: {done.stderr.strip()}")

    def start_app(self) -> None:
        done = self._ctl("start_app")
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl start_app: {done.stderr.strip()}")
        self._wait()

    def shutdown(self) -> None:
        """The whole node, by its node name; by the PID it wrote if that fails."""
        if self._ctl("stop").returncode != 0:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.base / "rabbit.pid").read_text().strip()), signal.SIGKILL)


class AmqpPulsar:
    def __init__(self, state: Path, jobs: int, broker: PrivateBroker) -> None:
        from tests.services.pulsar_amqp import PulsarAmqp

        self.server = PulsarAmqp(state, key_prefix="hc_crash", amqp_url=broker.url, num_concurrent_jobs=jobs)
        self.broker = broker

    def env(self) -> dict[str, str]:
        return {
            "TESP_API_PULSAR__URL": "",
            "TESP_API_PULSAR__AMQP_URL": self.broker.url,
            "TESP_API_PULSAR__AMQP_KEY_PREFIX": self.server.key_prefix,
            "TESP_API_PULSAR__AMQP_RECONCILE_AFTER": "20",
        }

    async def start(self) -> None:
        await self.server.start(120)

    async def kill9(self) -> None:
        proc = self.server.process
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        self.server.process = None

    async def stop(self) -> None:
        await self.server.stop()


class StagingBalancer:
    """One staging URL for every replica, as a load balancer gives a deployment (docs/amqp.md):
    each connection goes to the first replica's staging server that accepts it, starting with the
    next one in turn. A TCP relay on 127.0.0.1 in the run's event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.backends: list[int] = []
        self._turn = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._turn += 1
        order = (
            self.backends[self._turn % len(self.backends) :]
            + self.backends[: self._turn % len(self.backends)]
        )
        for port in order:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


# ---- clients and counting -------------------------------------------------------------------------


@dataclass
class Run:
    names: list[str]
    apis: list[Callable[[], str]]  # each: the base URL of an API replica (looked up per request)
    seconds: float
    answered: dict[str, str] = field(default_factory=dict)  # name -> id
    retries: int = 0
    posted: int = 0

    async def client(self, queue: list[str], http: httpx.AsyncClient, cid: int) -> None:
        while queue:
            name = queue.pop()
            body = counting_task(name, self.seconds)
            attempt = 0
            while True:
                api = self.apis[(cid + attempt) % len(self.apis)]()
                try:
                    resp = await http.post(
                        f"{api}/ga4gh/tes/v1/tasks", json=body, headers={"Idempotency-Key": name}, timeout=15
                    )
                    if resp.status_code == 200:
                        self.answered[name] = str(resp.json()["id"])
                        self.posted += 1
                        break
                except httpx.HTTPError:
                    pass
                attempt += 1
                self.retries += 1
                await asyncio.sleep(min(2.0, 0.2 * attempt) * (0.5 + random.random()))

    async def post_all(self, clients: int) -> None:
        queue = list(reversed(self.names))
        async with httpx.AsyncClient() as http:
            await asyncio.gather(*(self.client(queue, http, i) for i in range(clients)))


async def get_task(
    http: httpx.AsyncClient, api: str, task_id: str, view: str = "BASIC"
) -> dict[str, Any] | None:
    for _ in range(20):
        try:
            resp = await http.get(f"{api}/ga4gh/tes/v1/tasks/{task_id}", params={"view": view}, timeout=15)
            if resp.status_code == 404:
                return None
            if resp.status_code == 200:
                return dict(resp.json())
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1)
    raise RuntimeError(f"cannot read task {task_id}")


async def list_names(http: httpx.AsyncClient, api: str, prefix: str) -> Counter[str]:
    names: Counter[str] = Counter()
    token = None
    while True:
        params = {"view": "BASIC", "page_size": "500", "name_prefix": prefix}
        if token:
            params["page_token"] = token
        resp = await http.get(f"{api}/ga4gh/tes/v1/tasks", params=params, timeout=30)
        resp.raise_for_status()
        data = resp.json()
        names.update(str(t.get("name")) for t in data.get("tasks", []))
        token = data.get("next_page_token")
        if not token:
            return names


async def wait_final(
    http: httpx.AsyncClient, api: Callable[[], str], ids: list[str], timeout: float
) -> dict[str, dict[str, Any] | None]:
    deadline = time.monotonic() + timeout
    tasks: dict[str, dict[str, Any] | None] = {}
    pending = list(ids)
    sem = asyncio.Semaphore(16)

    async def one(tid: str) -> None:
        async with sem:
            tasks[tid] = await get_task(http, api(), tid)

    while True:
        await asyncio.gather(*(one(t) for t in pending))
        pending = [t for t in pending if tasks[t] is not None and tasks[t]["state"] not in FINAL]  # type: ignore[index]
        if not pending or time.monotonic() >= deadline:
            return tasks
        await asyncio.sleep(2)


async def report(
    run: Run, api: Callable[[], str], markers: Path, prefix: str, final_wait: float, t_fault: float
) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        ids = list(run.answered.values())
        left = max(30.0, final_wait - (time.monotonic() - t_fault))
        tasks = await wait_final(http, api, ids, left)
        lost = [t for t in ids if tasks.get(t) is None]
        nonfinal = [t for t, v in tasks.items() if v is not None and v["state"] not in FINAL]
        states = Counter(v["state"] for v in tasks.values() if v is not None)
        stored = await list_names(http, api(), prefix)
        duplicates = sum(n - 1 for n in stored.values() if n > 1)
        unanswered_stored = sorted(set(stored) - set(run.answered))
        reasons: Counter[str] = Counter()
        for tid, v in tasks.items():
            if v is not None and v["state"] in ("SYSTEM_ERROR", "PREEMPTED", "EXECUTOR_ERROR"):
                full = await get_task(http, api(), tid, "FULL")
                lines = [ln for lg in (full or {}).get("logs", []) for ln in lg.get("system_logs", [])]
                reasons[f"{v['state']}: {(lines[-1] if lines else '?')[:160]}"] += 1
    runs = {p.name: len(p.read_text().splitlines()) for p in markers.iterdir()}
    twice = sorted(n for n, k in runs.items() if k > 1)
    complete_names = {v["name"] for v in tasks.values() if v is not None and v["state"] == "COMPLETE"}
    never = sorted(n for n in complete_names if runs.get(n, 0) == 0)
    return {
        "names": len(run.names),
        "answered": len(run.answered),
        "client retries": run.retries,
        "answered tasks lost": len(lost),
        "non-final after wait": len(nonfinal),
        "duplicates": duplicates,
        "stored, never answered": len(unanswered_stored),
        "executors run twice": len(twice),
        "COMPLETE but never ran": len(never),
        "states": dict(states),
        "reasons": dict(reasons),
        "_nonfinal_ids": nonfinal[:10],
        "_twice": twice[:10],
    }


def print_report(title: str, figures: dict[str, Any], command: str) -> None:
    print(f"\n### {title}\n\n`{command}`\n")
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        if key.startswith("_") and not value:
            continue
        print(f"| {key} | {value} |")
    sys.stdout.flush()


async def start_pulsar(mode: str, work: Path) -> tuple[PrivateBroker | None, RestPulsar | AmqpPulsar]:
    """The run's Pulsar with 8 job slots: over REST, or over AMQP on a private RabbitMQ node of its own
    (started first; None in REST mode)."""
    broker = None
    pulsar: RestPulsar | AmqpPulsar
    if mode == "amqp":
        broker = PrivateBroker(work / "rabbitmq")
        await asyncio.to_thread(broker.start)
        pulsar = AmqpPulsar(work / "pulsar", 8, broker)
    else:
        pulsar = RestPulsar(work / "pulsar", 8)
    await pulsar.start()
    return broker, pulsar


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


async def at_progress(
    run: Run, share: float, action: Callable[[], Awaitable[None]], markers: Path | None = None
) -> None:
    """Run ``action`` once ``share`` of the tasks have been answered and (with ``markers``) the
    executors of half that many have started: the fault then hits jobs in flight, not an idle system."""
    want = share * len(run.names)
    while run.posted < want or (markers is not None and sum(1 for _ in markers.iterdir()) < want / 2):
        await asyncio.sleep(0.05)
    await action()
