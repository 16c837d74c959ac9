"""Retention (docs/callbacks.md, "Retention"): finished tasks older than retention.finished_max_age
are deleted with their scratch, in bounded batches, by one replica at a time; they answer 404 and
the count is logged and in /metrics. Real SQLite store and the real API app in-process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.engine.retention import RetentionSweeper
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesState, TesTask
from tests.services.pulsar import LocalPulsar

BASE = "/ga4gh/tes/v1"
LATER = timedelta(hours=2)


def retention_settings(tmp: Path, **retention: Any) -> Settings:
    return Settings.model_validate(
        {
            "retention": {"finished_max_age": 3600, **retention},
            "engine": {"work_dir": str(tmp / "work")},
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    s = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await s.open()
    yield s
    await s.close()


async def finished_task(store: SqliteTaskStore, tmp: Path, state: TesState = TesState.COMPLETE) -> str:
    """A task the engine has finished with, whose scratch a crash left behind."""
    task = TesTask(id=new_task_id(), executors=[TesExecutor(image="alpine", command=["true"])])
    await store.create(task, None)
    assert task.id is not None
    await store.update(task.id, state=state, active=False)
    (tmp / "work" / task.id / "inputs").mkdir(parents=True)
    return task.id


async def test_old_finished_tasks_are_deleted_with_their_scratch_and_answer_404(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    settings = retention_settings(tmp_path)
    old = [await finished_task(store, tmp_path, state) for state in (TesState.COMPLETE, TesState.CANCELED)]
    running = TesTask(id=new_task_id(), executors=[TesExecutor(image="alpine", command=["true"])])
    await store.create(running, None)
    deleted = await RetentionSweeper(settings, store).sweep_once(now=datetime.now(UTC) + LATER)
    assert deleted == 2
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        for task_id in old:
            assert (await c.get(f"{BASE}/tasks/{task_id}")).status_code == 404
            assert not (tmp_path / "work" / task_id).exists()
        assert (await c.get(f"{BASE}/tasks/{running.id}")).status_code == 200
        listed = (await c.get(f"{BASE}/tasks")).json()["tasks"]
        assert [t["id"] for t in listed] == [running.id]


async def test_tasks_that_ended_less_than_the_max_age_ago_are_kept(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    task_id = await finished_task(store, tmp_path)
    assert await RetentionSweeper(retention_settings(tmp_path), store).sweep_once() == 0
    assert await store.get(task_id) is not None


async def test_retention_is_off_by_default(tmp_path: Path, store: SqliteTaskStore) -> None:
    task_id = await finished_task(store, tmp_path)
    settings = retention_settings(tmp_path, finished_max_age=0)
    assert Settings().retention.finished_max_age == 0
    assert (
        await RetentionSweeper(settings, store).sweep_once(now=datetime.now(UTC) + timedelta(days=3650)) == 0
    )
    assert await store.get(task_id) is not None


async def test_a_sweep_deletes_everything_due_in_bounded_batches(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    for _ in range(7):
        await finished_task(store, tmp_path)
    calls: list[int] = []
    real = store.delete_finished

    async def counted(ended_before: datetime, limit: int) -> list[str]:
        found = await real(ended_before, limit)
        calls.append(len(found))
        return found

    store.delete_finished = counted  # type: ignore[method-assign]  # counts the store calls
    sweeper = RetentionSweeper(retention_settings(tmp_path, batch_size=3), store)
    assert await sweeper.sweep_once(now=datetime.now(UTC) + LATER) == 7
    assert calls == [3, 3, 1]
    assert await store.count() == 0


async def test_one_replica_sweeps_at_a_time(tmp_path: Path, store: SqliteTaskStore) -> None:
    settings = retention_settings(tmp_path)
    other_store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))  # a second replica: its own connection
    await other_store.open()
    try:
        first = RetentionSweeper(settings, store, worker_id="replica-a")
        second = RetentionSweeper(settings, other_store, worker_id="replica-b")
        await finished_task(store, tmp_path)
        assert await first.sweep_once(now=datetime.now(UTC) + LATER) == 1
        await finished_task(store, tmp_path)
        assert await second.sweep_once(now=datetime.now(UTC) + LATER) == 0  # a holds the lease
        assert await first.sweep_once(now=datetime.now(UTC) + LATER) == 1
    finally:
        await other_store.close()


async def test_the_deleted_count_is_logged_and_in_metrics(
    tmp_path: Path, store: SqliteTaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    before = REGISTRY.get_sample_value("tesp_tasks_deleted_total") or 0.0
    for _ in range(3):
        await finished_task(store, tmp_path)
    with caplog.at_level(logging.INFO, logger="tesp_api.engine.retention"):
        await RetentionSweeper(retention_settings(tmp_path), store).sweep_once(now=datetime.now(UTC) + LATER)
    assert "deleted 3 finished task(s)" in caplog.text
    assert REGISTRY.get_sample_value("tesp_tasks_deleted_total") == before + 3
    app = create_app(retention_settings(tmp_path), store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        assert "tesp_tasks_deleted_total" in (await c.get("/metrics")).text


@pytest.mark.pulsar
@pytest.mark.slow
def test_a_real_serve_deletes_a_finished_task_which_then_answers_404(
    pulsar: LocalPulsar, tmp_path: Path
) -> None:
    import time

    from tests.engine.serve_process import ServeProcess

    serve = ServeProcess(
        tmp_path,
        pulsar.url,
        TESP_API_RETENTION__FINISHED_MAX_AGE="1",
        TESP_API_RETENTION__INTERVAL="0.5",
    )
    serve.start()
    try:
        answer = httpx.post(
            f"{serve.url}{BASE}/tasks",
            json={"executors": [{"image": "alpine", "command": ["true"]}]},
            timeout=30,
        )
        task_id = answer.json()["id"]
        deadline = time.monotonic() + 180
        while (got := httpx.get(f"{serve.url}{BASE}/tasks/{task_id}", timeout=30)).status_code == 200:
            assert got.json()["state"] in ("QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"), got.text
            assert time.monotonic() < deadline, got.text
            time.sleep(0.3)
        assert got.status_code == 404
        assert "retention: deleted 1 finished task(s)" in serve.log_file.read_text()
        assert "tesp_tasks_deleted_total 1.0" in httpx.get(f"{serve.url}/metrics", timeout=30).text
    finally:
        serve.stop()
