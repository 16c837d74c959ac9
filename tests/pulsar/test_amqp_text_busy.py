"""Over AMQP too, a task whose job script Pulsar's shell could not exec ("command.sh: Text file
busy", exit 126: Pulsar's fork/exec race, tesp_api/engine/exec_race.py) is submitted again and
completes, its executor run once.

The race is made certain as in tests/e2e/test_pulsar_text_busy.py: the task is in the store before
the engine starts, so its id (the Pulsar job id) is known while the test creates and holds open
``<staging>/<id>/command.sh``; Pulsar's setup accepts the existing job directory and rewrites the
file in place, and plain ``pulsar-main`` (``exec_job_scripts``) then fails to exec it.

Real parts: pulsar-main (AMQP) as a child process, the RabbitMQ broker, the embedded store, the
engine in-process, executors under bubblewrap.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.pulsar.serve import JOB_SCRIPT
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.pulsar.test_amqp_engine import _broker, settings  # noqa: F401 (its fixtures: broker required, settings)
from tests.services.pulsar_amqp import PulsarAmqp, running_pulsar_amqp

pytestmark = [pytest.mark.amqp, pytest.mark.pulsar, pytest.mark.timeout(180)]


@pytest.fixture
async def pulsar(tmp_path: Path) -> AsyncIterator[PulsarAmqp]:
    async with running_pulsar_amqp(tmp_path / "pulsar", "busy", exec_job_scripts=True) as server:
        yield server


async def test_a_task_whose_job_script_was_text_busy_on_plain_pulsar_main_is_run_again_and_completes(
    pulsar: PulsarAmqp,
    settings: Settings,
    store: SqliteTaskStore,
) -> None:
    tid = await submit(store, {"executors": [{"image": "alpine", "command": ["echo", "ran"]}]})
    job_dir = pulsar.staging_directory / tid
    job_dir.mkdir(parents=True)
    held = os.open(job_dir / JOB_SCRIPT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    engine = Engine(settings, store)
    await engine.start()
    try:
        rec = await wait_for(store, tid, timeout=150)
    finally:
        os.close(held)
        await engine.stop()
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert [lg.stdout for lg in rec.log.logs] == ["ran\n"]
    reruns = [line for line in rec.log.system_logs if "Text file busy" in line]
    assert len(reruns) == 1 and f"Pulsar job {tid}-r1" in reruns[0], rec.log.system_logs
