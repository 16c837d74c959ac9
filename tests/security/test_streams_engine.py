"""The planted-link attack of issue 10 through the whole engine (real Pulsar REST, real runner, bwrap):
the task ends EXECUTOR_ERROR with the reason in its system logs, and nothing exists outside the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import pulsar, settings, submit, wait_for

pytestmark = pytest.mark.pulsar
__all__ = ["pulsar", "settings"]  # the engine suite's fixtures: one real Pulsar for the session


async def test_stdout_through_a_planted_link_ends_executor_error_and_writes_nothing_outside(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tid = await submit(
        store,
        {
            "volumes": ["/data"],
            "executors": [
                {"image": "alpine", "command": ["ln", "-s", str(outside), "/data/x"]},
                {"image": "alpine", "command": ["echo", "pwned"], "stdout": "/data/x/pwned"},
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert list(outside.iterdir()) == []
    assert any("not started" in line and "link" in line for line in rec.log.system_logs or []), (
        rec.log.system_logs
    )
    assert [lg.exit_code for lg in rec.log.logs] == [0, 1]
