"""`tesp-api serve` with api.workers = 2 and the engine on: /metrics is one answer for the whole
service (prometheus-client multiprocess mode, docs/metrics.md), whichever API process the kernel
hands the scrape to. Real child processes, a real Pulsar (REST), the embedded SQLite store.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_serve_workers import children_of, wait_final
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
# No health probes: nothing but the test's tasks moves a counter between two scrapes.
WORKERS = {"TESP_API_API__WORKERS": "2", "TESP_API_PULSAR__HEALTH__PROBE_INTERVAL": "0"}
API_ROLE = ("tesp_serve_processes", {"role": "api"})
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-metrics"), num_concurrent_jobs=4) as server:
        yield server


@pytest.fixture
def service(pulsar: LocalPulsar, tmp_path: Path) -> Iterator[ServeProcess]:
    """`tesp-api serve` with two API processes and the engine, stopped by its PID whatever happens."""
    server = ServeProcess(tmp_path, pulsar.url, **WORKERS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scrape(url: str) -> Samples:
    """One scrape on a new connection (so the kernel picks an API process each time)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metrics_dir(pid: int) -> Path:
    """The service's PROMETHEUS_MULTIPROC_DIR, found by the files a child has mapped."""
    for mapped in psutil.Process(pid).memory_maps():
        path = Path(mapped.path)
        if path.parent.name == "metrics" and path.suffix == ".db":
            return path.parent
    raise AssertionError(f"pid {pid} maps no metrics file")


def own_value(directory: Path, pid: int, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample from one process's files alone."""
    files = [str(f) for f in directory.glob(f"*_{pid}.db")]
    for family in MultiProcessCollector.merge(files):  # type: ignore[no-untyped-call]
        for s in family.samples:
            if s.name == name and s.labels == (labels or {}):
                return float(s.value)
    return 0.0


def test_every_scrape_answers_the_same_totals_of_both_api_processes_and_the_engine(
    service: ServeProcess,
) -> None:
    server = service
    assert server.process is not None
    try:
        kids = children_of(server.process.pid)
        directory = metrics_dir(kids[0].pid)
        assert directory.stat().st_mode & 0o777 == 0o700
        deadline = time.monotonic() + 60
        while len(api_pids := [k.pid for k in kids if own_value(directory, k.pid, *API_ROLE)]) < 2:
            assert time.monotonic() < deadline, "the second API process never started"
            time.sleep(0.2)
        engine_pid = next(k.pid for k in kids if k.pid not in api_pids)
        api = server.url + "/ga4gh/tes/v1"
        body = {"executors": [{"image": "alpine", "command": ["true"]}]}
        ids: list[str] = []
        # creates on new connections until both API processes have counted some (bounded)
        while len(ids) < 4 or not all(own_value(directory, p, "tesp_tasks_created_total") for p in api_pids):
            assert len(ids) < 64, "the kernel never gave the second API process a connection"
            ids.append(httpx.post(f"{api}/tasks", json=body, timeout=10).json()["id"])
        assert {wait_final(api, task_id)["state"] for task_id in ids} == {"COMPLETE"}

        def settled(samples: Samples) -> bool:  # the engine counts a finish after the store says so
            return samples.get(("tesp_tasks_finished_total", (("state", "COMPLETE"),))) == len(ids)

        deadline = time.monotonic() + 60
        while not settled(first := scrape(server.url)):
            assert time.monotonic() < deadline, first
            time.sleep(0.2)
        scrapes = [first] + [scrape(server.url) for _ in range(12)]
        created_by_each = [own_value(directory, p, "tesp_tasks_created_total") for p in api_pids]
        finished_by_engine = own_value(
            directory, engine_pid, "tesp_tasks_finished_total", {"state": "COMPLETE"}
        )
    finally:
        server.stop()
    # One answer, whichever API process gave it. The engine may still be cleaning the finished jobs
    # up on Pulsar meanwhile: its Pulsar request counts only grow, and are in every answer.
    settled_part = [
        {k: v for k, v in s.items() if not k[0].startswith("tesp_pulsar_request")} for s in scrapes
    ]
    assert all(part == settled_part[0] for part in settled_part)
    pulsar_calls = [s[("tesp_pulsar_request_seconds_count", (("server", "default"),))] for s in scrapes]
    assert pulsar_calls == sorted(pulsar_calls) and pulsar_calls[0] > 0
    assert first[("tesp_tasks_created_total", ())] == len(ids)
    assert sum(created_by_each) == len(ids) and all(created_by_each)  # both API processes' counts
    assert finished_by_engine == len(ids)  # the engine process's counter, in the API's answer
    assert first[("tesp_tasks", (("state", "COMPLETE"),))] == len(ids)  # read once, not summed
    assert first[("tesp_serve_processes", (("role", "api"),))] == 2
    assert first[("tesp_serve_processes", (("role", "engine"),))] == 1
    assert first[("tesp_task_duration_seconds_count", ())] == len(ids)
    assert not any(name.startswith("process_") for name, _ in first)
    assert not directory.exists()  # removed when the service stopped


def test_a_killed_api_process_stops_the_service_and_the_metrics_directory_is_removed(
    service: ServeProcess,
) -> None:
    server = service
    assert server.process is not None
    kids = children_of(server.process.pid)
    directory = metrics_dir(kids[0].pid)
    victim = next(k for k in kids if own_value(directory, k.pid, *API_ROLE))
    assert (directory / f"gauge_livesum_{victim.pid}.db").exists()
    os.kill(victim.pid, signal.SIGKILL)
    assert server.process.wait(timeout=90) == 1  # a dead child stops the service (tesp_api/workers.py)
    assert not directory.exists()
    log = server.log_file.read_text()
    assert f"pid {victim.pid}) exited with -9" in log
