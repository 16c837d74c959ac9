"""Engine tests: ONE real Pulsar (pulsar-serve, REST) for the module session, a fresh SQLite store
and engine per test. Executors run under bubblewrap: there is no Docker engine on these machines,
so bwrap stands in for the container runtime (the image is ignored, the host userland runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.settings import Settings
from tesp_api.store.port import TaskRecord
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesState, TesTask
from tests.services.egress import LOOPBACK_TRANSFER
from tests.services.pulsar import LocalPulsar, pulsar_server


@pytest.fixture(scope="session")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar"), num_concurrent_jobs=8) as server:
        yield server


def engine_settings(pulsar_url: str, tmp: Path, **engine: Any) -> Settings:
    return Settings.model_validate(
        {
            "pulsar": {
                "url": pulsar_url,
                "status": {"poll_interval": 0.2},
                "retries": 1,
                "unreachable_deadline": 3,
            },
            "engine": {"work_dir": str(tmp / "work"), "claim_interval": 0.1, "lease_seconds": 5, **engine},
            "runtime": {"type": "bwrap"},
            "transfer": {"allowed_dirs": [str(tmp)], **LOOPBACK_TRANSFER},  # data servers on 127.0.0.1
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


@pytest.fixture
def settings(pulsar: LocalPulsar, tmp_path: Path) -> Settings:
    return engine_settings(pulsar.url, tmp_path)


async def submit(store: SqliteTaskStore, task: dict[str, Any]) -> str:
    t = TesTask.model_validate(task)
    t.id = new_task_id()
    await store.create(t, None)
    return t.id


async def wait_for(
    store: SqliteTaskStore,
    task_id: str,
    *,
    states: set[TesState] | None = None,
    inactive: bool = True,
    timeout: float = 60.0,
) -> TaskRecord:
    """Poll the store until the task is in one of ``states`` (default: any final) and, with
    ``inactive``, the engine has let go of it."""
    from tesp_api.tes.states import FINAL_STATES

    wanted = states or set(FINAL_STATES)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rec = await store.get(task_id)
        assert rec is not None
        if rec.state in wanted and (not inactive or not rec.active):
            return rec
        if loop.time() > deadline:
            raise AssertionError(
                f"task {task_id} still {rec.state} (active={rec.active}) after {timeout}s; "
                f"backend {rec.backend}, system_logs {rec.log.system_logs}"
            )
        await asyncio.sleep(0.05)
