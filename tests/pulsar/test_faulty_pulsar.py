"""A faulty Pulsar: the real engine and a real Pulsar, with a proxy in between that answers 503 or
drops the connection (before forwarding, or after Pulsar did the work) for a share of the requests,
on every endpoint (tests/services/faulty_proxy.py, seeded). Transient faults must never fail a task,
and must never make an executor run twice; a refusal (401) must not be retried.

Executions are counted on the host: each executor appends to a per-task marker file in a directory
bound into the sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.store.port import TaskRecord
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.services.faulty_proxy import FaultyProxy, faulty_proxy
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
TOKEN = "faulty-pulsar-token"
TASKS = 8


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(
        tmp_path_factory.mktemp("pulsar-faulty"), private_token=TOKEN, num_concurrent_jobs=8
    ) as server:
        yield server


@pytest.fixture
def proxy(pulsar: LocalPulsar) -> Iterator[FaultyProxy]:
    with faulty_proxy(pulsar.url, share=0.3, seed=20261201) as running:
        yield running


def settings_through(url: str, tmp_path: Path, markers: Path, *, token: str) -> Settings:
    base = engine_settings(url, tmp_path).model_dump(mode="json")
    base["pulsar"].update({"private_token": token, "unreachable_deadline": 120})
    base["runtime"]["extra_args"] = ["--bind", str(markers), "/markers"]
    return Settings.model_validate(base)


def marker_dir(tmp_path: Path) -> Path:
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)  # executors run as runtime.sandbox_user under a root runner
    return markers


def counting_task(mark: str, out: Path) -> dict[str, object]:
    return {
        "inputs": [{"path": "/in/data.txt", "content": f"payload {mark}\n"}],
        "outputs": [{"path": "/out/copy.txt", "url": f"file://{out}"}],
        "executors": [
            {
                "image": "alpine",
                "command": [
                    "sh",
                    "-c",
                    'echo run >> "/markers/$MARK"; cp /in/data.txt /out/copy.txt; echo "done $MARK"',
                ],
                "env": {"MARK": mark},
            }
        ],
    }


async def test_tasks_through_a_faulty_pulsar_all_complete_and_each_executor_runs_once(
    proxy: FaultyProxy, store: SqliteTaskStore, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    settings = settings_through(proxy.url, tmp_path, markers, token=TOKEN)
    out = tmp_path / "results"
    engine = Engine(settings, store)
    await engine.start()
    try:
        ids = [await submit(store, counting_task(f"t{i}", out / f"t{i}.txt")) for i in range(TASKS)]
        records = await asyncio.gather(*(wait_for(store, tid, timeout=240) for tid in ids))
    finally:
        await engine.stop()
    for i, rec in enumerate(records):
        assert rec.state == TesState.COMPLETE, (rec.state, rec.log.system_logs)
        assert [lg.stdout for lg in rec.log.logs] == [f"done t{i}\n"]
        assert (out / f"t{i}.txt").read_text() == f"payload t{i}\n"
        assert (markers / f"t{i}").read_text() == "run\n", f"t{i} ran more than once"
    faults = proxy.faults()
    # The proxy really got in the way, of every kind, on the calls that matter.
    assert all(faults.get(kind, 0) > 0 for kind in ("503", "drop", "drop-after")), faults
    assert faults["requests"] > 100
    assert any(k.endswith("/submit") for k in faults)


async def refused_run(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path, *, inactive: bool
) -> tuple[TaskRecord, dict[str, int]]:
    """One task through an honest proxy (it counts the requests, injects nothing) with a wrong token."""
    markers = marker_dir(tmp_path)
    with faulty_proxy(pulsar.url, share=0.0) as honest:
        settings = settings_through(honest.url, tmp_path, markers, token="not-the-token")
        engine = Engine(settings, store)
        await engine.start()
        try:
            tid = await submit(store, counting_task("refused", tmp_path / "never.txt"))
            rec = await wait_for(store, tid, timeout=60, inactive=inactive)
        finally:
            await engine.stop()
        faults = honest.faults()
    assert not (markers / "refused").exists()
    return rec, faults


async def test_a_refused_token_ends_the_task_at_once_without_retrying(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path
) -> None:
    """Pulsar's 401 (a wrong private_token) is a refusal: the task ends SYSTEM_ERROR naming it at the
    first answer, and the refused setup is not sent again (before: 'file missing', or waiting)."""
    rec, faults = await refused_run(pulsar, store, tmp_path, inactive=False)
    assert rec.state == TesState.SYSTEM_ERROR
    assert any("refused the private token" in line for line in rec.log.system_logs), rec.log.system_logs
    assert faults["POST /jobs"] == 1, faults
    assert faults.get("status-401", 0) == faults["requests"]


async def test_a_refused_token_lets_go_of_the_task_and_repeats_no_request(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path
) -> None:
    rec, faults = await refused_run(pulsar, store, tmp_path, inactive=True)
    assert rec.state == TesState.SYSTEM_ERROR
    calls = {k: v for k, v in faults.items() if k.split(" ", 1)[0] in {"GET", "POST", "PUT", "DELETE"}}
    assert calls and all(n == 1 for n in calls.values()), calls
