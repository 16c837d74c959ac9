"""The composition root: logging from settings, and the assembled app around the configured store."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tesp_api.config.settings import LoggingSettings
from tesp_api.service import configure_logging, running_app
from tests.api.conftest import BASE, make_settings, task_body


def test_output_json_writes_one_json_object_per_line(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(LoggingSettings(level="INFO", output_json=True))
    logging.getLogger("tesp_api.test").info("task %s created", "t-1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "task t-1 created"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tesp_api.test"


def test_logging_level_comes_from_settings(restore_root_logging: None) -> None:
    configure_logging(LoggingSettings(level="WARNING"))
    assert logging.getLogger().level == logging.WARNING


async def test_running_app_serves_tasks_from_the_configured_sqlite_file(tmp_path: Path) -> None:
    db_file = tmp_path / "state" / "tasks.sqlite3"
    settings = make_settings(db={"sqlite_path": str(db_file)}, engine={"enabled": False})
    async with (
        running_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as client,
    ):
        response = await client.post(f"{BASE}/tasks", json=task_body())
    assert response.status_code == 200
    assert db_file.exists()


def test_a_serving_process_freezes_its_start_up_objects_and_collects_young_ones_less_often() -> None:
    # In a child: gc.freeze is for the rest of a process's life.
    script = (
        "import gc; from tesp_api.service import GC_YOUNG_THRESHOLD, tune_gc_for_serving;"
        "tune_gc_for_serving();"
        "print(gc.get_freeze_count() > 10000, gc.get_threshold()[0] == GC_YOUNG_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
