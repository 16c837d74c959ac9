"""What admission accepts, the engine runs: a workdir of "/" or a system directory is a chdir, never a
mount and never a SYSTEM_ERROR (issue 10: Pulsar's TES client, used by Galaxy, sends ``workdir: "/"``
on every executor, and the task died with "executors[0].workdir: path '/' cannot be mapped").

Real Pulsar (REST) and bubblewrap, as in tests/engine (bwrap stands in for a container runtime: the
image is ignored and the host userland runs the command).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tesp_api.tes.validate import ValidationLimits, validate_task
from tests.engine.conftest import engine_settings, pulsar, submit, wait_for  # noqa: F401 (pulsar: fixture)
from tests.services.pulsar import LocalPulsar

pytestmark = pytest.mark.pulsar


@pytest.fixture
def settings(pulsar: LocalPulsar, tmp_path: Path) -> Settings:
    return engine_settings(pulsar.url, tmp_path)


def admitted(body: dict[str, object]) -> dict[str, object]:
    """``body`` after the API's own checks (it must be accepted)."""
    validate_task(
        body, ValidationLimits(), check_input_url=lambda u, t: None, check_output_url=lambda u, t: None
    )
    return body


@pytest.mark.parametrize("workdir", ["/", "/usr"])
async def test_a_workdir_that_is_slash_or_a_system_directory_runs_there(
    engine: Engine, store: SqliteTaskStore, workdir: str
) -> None:
    body = admitted({"executors": [{"image": "alpine", "command": ["pwd"], "workdir": workdir}]})
    rec = await wait_for(store, await submit(store, body))
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert rec.log.logs[0].stdout == workdir + "\n"


async def test_a_galaxy_shaped_task_runs_its_three_executors(engine: Engine, store: SqliteTaskStore) -> None:
    """Pulsar's TES client: stage-in, tool, stage-out, all with workdir "/", sharing /pulsar_staging/."""
    body = admitted(
        {
            "volumes": ["/pulsar_staging/"],
            "executors": [
                {
                    "image": "galaxy/pulsar-pod-staging:0.15.0",
                    "workdir": "/",
                    "command": ["sh", "-c", "echo staged > /pulsar_staging/in"],
                },
                {
                    "image": "quay.io/biocontainers/coreutils:8.31--h14c3975_0",
                    "workdir": "/",
                    "command": ["sh", "-c", "tr a-z A-Z < /pulsar_staging/in > /pulsar_staging/out"],
                },
                {
                    "image": "galaxy/pulsar-pod-staging:0.15.0",
                    "workdir": "/",
                    "command": ["cat", "/pulsar_staging/out"],
                },
            ],
        }
    )
    rec = await wait_for(store, await submit(store, body))
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert [lg.stdout for lg in rec.log.logs] == ["", "", "STAGED\n"]


async def test_paths_as_sloppy_as_admission_accepts_run_as_their_normal_form(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    """Admission accepts ``//``, ``.`` segments and trailing slashes (normalising them); the job must too."""
    body = admitted(
        {
            "inputs": [{"path": "/in//./data.txt", "content": "hello"}],
            "outputs": [
                {"path": "/out//log.txt", "url": f"file://{tmp_path}/log.txt"},
                {"path": "/out/./", "url": f"file://{tmp_path}/dir", "type": "DIRECTORY"},
            ],
            "executors": [
                {
                    "image": "alpine",
                    "command": ["cat"],
                    "stdin": "/in/data.txt/",
                    "stdout": "/out//log.txt",
                    "workdir": "/work//dir/",
                }
            ],
        }
    )
    rec = await wait_for(store, await submit(store, body))
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert (tmp_path / "log.txt").read_text() == "hello"
    assert (tmp_path / "dir" / "log.txt").read_text() == "hello"
