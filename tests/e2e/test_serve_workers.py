"""`tesp-api serve` with api.workers = 2: two API processes on one socket and the engine in its own
process (tesp_api/workers.py, issue 15), as real child processes against a real Pulsar (REST) and
the embedded SQLite store shared by all three; executors under bubblewrap.

The claim interval is set to an hour, so a task only runs at once if the API process's wake-up
datagram reached the engine process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tesp_api.store.sqlite import SqliteTaskStore
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
WORKERS = {"TESP_API_API__WORKERS": "2", "TESP_API_ENGINE__CLAIM_INTERVAL": "3600"}


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-workers"), num_concurrent_jobs=4) as server:
        yield server


def children_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def wait_final(api: str, task_id: str, seconds: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while True:
        task = httpx.get(f"{api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json()
        if task["state"] in FINAL:
            return dict(task)
        assert time.monotonic() < deadline, task
        time.sleep(0.2)


def gone(processes: list[psutil.Process], seconds: float = 90.0) -> bool:
    """Whether every process ended (a zombie waiting for its reaper counts as ended) in time: the
    engine's graceful stop can take a while on a loaded machine."""

    def ended(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + seconds
    while not all(ended(p) for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_two_api_workers_serve_create_and_run_a_task_then_stop_cleanly(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path, pulsar.url, **WORKERS)
    server.start()
    assert server.process is not None
    try:
        kids = children_of(server.process.pid)
        assert len(kids) == 3  # two API processes and the engine
        api = server.url + "/ga4gh/tes/v1"
        with httpx.Client(timeout=10) as client:  # new connections: the kernel spreads them
            ids = [
                client.post(
                    f"{api}/tasks",
                    json={
                        "name": f"t{i}",
                        "executors": [{"image": "alpine", "command": ["echo", f"hello {i}"]}],
                    },
                ).json()["id"]
                for i in range(4)
            ]
            listed = client.get(f"{api}/tasks", params={"page_size": 10}).json()
        assert {t["id"] for t in listed["tasks"]} == set(ids)
        for i, task_id in enumerate(ids):
            task = wait_final(api, task_id)
            assert task["state"] == "COMPLETE", task
            assert task["logs"][0]["logs"][0]["stdout"] == f"hello {i}\n"  # type: ignore[index]
    finally:
        server.stop()
    assert server.process.returncode == 0
    assert gone(kids), "a child process outlived `tesp-api serve`"
    assert "Traceback" not in server.log_file.read_text()


def test_a_cancel_in_an_api_process_reaches_the_engine_process(pulsar: LocalPulsar, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, pulsar.url, **WORKERS)
    server.start()
    try:
        api = server.url + "/ga4gh/tes/v1"
        task_id = httpx.post(
            f"{api}/tasks", json={"executors": [{"image": "alpine", "command": ["sleep", "600"]}]}, timeout=10
        ).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{api}/tasks/{task_id}", timeout=10).json()["state"] != "RUNNING":
            assert time.monotonic() < deadline, "the task never ran"
            time.sleep(0.2)
        assert httpx.post(f"{api}/tasks/{task_id}:cancel", timeout=10).json() == {}
        assert wait_final(api, task_id)["state"] == "CANCELED"
        deadline = time.monotonic() + 60
        while (pulsar.staging_directory / task_id).exists():  # the engine killed and cleaned the job
            assert time.monotonic() < deadline, "the Pulsar job of the canceled task was never cleaned"
            time.sleep(0.2)
    finally:
        server.stop()


def test_children_die_with_a_killed_serve_process(pulsar: LocalPulsar, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, pulsar.url, **WORKERS)
    server.start()
    assert server.process is not None
    kids = children_of(server.process.pid)
    assert kids
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    assert gone(kids), "orphaned API or engine processes after kill -9 of `tesp-api serve`"


def test_every_create_two_api_processes_answered_survives_kill_9_of_the_service(tmp_path: Path) -> None:
    """Both API processes write the one SQLite file at once (their writers take turns through the
    writer queue, tesp_api/store/sqlite/writer_queue.py); the whole service is killed -9 under
    load, and every create that was answered is in the file."""
    server = ServeProcess(
        tmp_path, "http://127.0.0.1:9", TESP_API_API__WORKERS="2", TESP_API_ENGINE__ENABLED="false"
    )
    server.start()
    assert server.process is not None
    kids = children_of(server.process.pid)
    assert len(kids) == 2
    lock = str(tmp_path / "tasks.sqlite3-writer.lock")
    for kid in kids:  # both API processes use the queue
        assert lock in {f.path for f in kid.open_files()}
    answered: list[str] = []
    refused: list[str] = []  # an answer other than 200 (a thread cannot fail the test itself)
    killed = threading.Event()
    body = {"executors": [{"image": "alpine", "command": ["true"]}]}

    def create_until_killed() -> None:
        with httpx.Client(timeout=30) as client:  # a connection each: the kernel spreads them
            while not killed.is_set():
                try:
                    response = client.post(f"{server.url}/ga4gh/tes/v1/tasks", json=body)
                except httpx.TransportError:
                    return
                if response.status_code != 200:
                    refused.append(response.text)
                    return
                answered.append(response.json()["id"])

    clients = [threading.Thread(target=create_until_killed) for _ in range(16)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 120
        while len(answered) < 400:
            assert time.monotonic() < deadline, f"only {len(answered)} creates answered"
            time.sleep(0.05)
    finally:
        for p in [*kids, server.process]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        killed.set()
        server.process.wait()
        for client in clients:
            client.join(60)
    assert gone(kids)
    assert refused == []

    async def stored(ids: list[str]) -> set[str]:
        store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
        await store.open()
        try:
            return {task_id for task_id in ids if await store.get(task_id) is not None}
        finally:
            await store.close()

    assert asyncio.run(stored(answered)) == set(answered)
