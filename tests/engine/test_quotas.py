"""Fair per-user quotas end to end (docs/quotas.md): `tesp-api serve` (the API, engine off) under
Basic auth with two users, and TWO `tesp-api worker` processes on one SQLite store, in front of one
real Pulsar (pulsar-serve). Executors run under bubblewrap (no Docker engine on these machines).

The limit is decided in the store, so it holds across the two workers: at no moment do more than
``quotas.max_active_per_user`` of alice's tasks overlap (their start/end times, recorded by the
workers, show it), bob's one task starts before alice's backlog drains, and a waiting task says in
its FULL view why it waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from tests.auth.conftest import cheap_hash
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]

LIMIT = 2
ALICE, BOB, ROOT = ("alice", "alice-pw"), ("bob", "bob-pw"), ("root", "root-pw")


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-quotas"), num_concurrent_jobs=8) as server:
        yield server


def settings_toml() -> str:
    users = "\n".join(
        f'[[default.auth.users]]\nusername = "{name}"\npassword_hash = "{cheap_hash(pw)}"\nadmin = {str(name == "root").lower()}'
        for name, pw in (ALICE, BOB, ROOT)
    )
    return f"""
[default.auth]
mode = "basic"
{users}

[default.quotas]
max_active_per_user = {LIMIT}
"""


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


class Cluster:
    """The API process and two worker processes on one store; every process stopped by its PID."""

    def __init__(self, tmp_path: Path, pulsar: LocalPulsar) -> None:
        (tmp_path / "settings.toml").write_text(settings_toml())
        self.api_server = ServeProcess(tmp_path, pulsar.url, TESP_API_ENGINE__ENABLED="false")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.tmp = tmp_path

    def __enter__(self) -> Self:
        self.api_server.start()
        env = {**self.api_server.env, "TESP_API_ENGINE__ENABLED": "true"}
        for i in range(2):
            with (self.tmp / f"worker{i}.log").open("wb") as log:
                self.workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tesp_api", "worker"],
                        cwd=self.tmp,
                        env={**env, "TESP_API_ENGINE__WORKER_ID": f"worker{i}"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
        self.api_server.stop()

    @property
    def api(self) -> str:
        return self.api_server.url + "/ga4gh/tes/v1"

    def create(self, user: tuple[str, str], seconds: float) -> str:
        task = {"executors": [{"image": "a", "command": ["sleep", str(seconds)]}]}
        answer = httpx.post(f"{self.api}/tasks", json=task, auth=user, timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])

    def get(self, user: tuple[str, str], task_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.api}/tasks/{task_id}", params={"view": "FULL"}, auth=user, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait(
        self, user: tuple[str, str], task_id: str, states: set[str], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(user, task_id)
            if task["state"] in states:
                return task
            assert time.monotonic() < deadline, f"{task_id} still {task['state']}"
            time.sleep(0.1)


def test_quotas_hold_across_two_workers_and_a_new_user_is_not_starved(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    with Cluster(tmp_path, pulsar) as cluster:
        alices = [cluster.create(ALICE, 3) for _ in range(6)]
        # Once two of hers run, alice is at her limit: her last task waits, and says why.
        deadline = time.monotonic() + 60
        while True:
            waiting = cluster.get(ALICE, alices[-1])
            assert waiting["state"] == "QUEUED", waiting["state"]
            lines = (waiting.get("logs") or [{}])[0].get("system_logs") or []
            if any("waiting for a quota" in line and f"the limit is {LIMIT}" in line for line in lines):
                break
            assert time.monotonic() < deadline, waiting
            time.sleep(0.1)
        bobs = cluster.create(BOB, 0.1)
        bob_done = cluster.wait(BOB, bobs, {"COMPLETE"})
        done = [cluster.wait(ALICE, t, {"COMPLETE"}) for t in alices]

        servers = httpx.get(f"{cluster.api}/admin/servers", auth=ROOT, timeout=10)
        forbidden = httpx.get(f"{cluster.api}/admin/servers", auth=ALICE, timeout=10)

    intervals = [(parse(t["logs"][0]["start_time"]), parse(t["logs"][0]["end_time"])) for t in done]
    assert max_overlap(intervals) <= LIMIT
    assert max_overlap(intervals) == LIMIT  # the limit is used, not just respected
    last_alice_start = max(start for start, _ in intervals)
    assert parse(bob_done["logs"][0]["start_time"]) < last_alice_start  # not behind alice's backlog
    assert servers.status_code == 200 and servers.json()["servers"][0]["name"] == "default"
    assert forbidden.status_code == 403
