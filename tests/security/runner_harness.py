"""Run the job runner for real on a task, without Pulsar, in a directory laid out like a Pulsar job:
the security tests' way to look at exactly what the runner does on the host (bwrap executors).

``capeff_command()`` / ``parse_capeff()``: what the runtime suites run inside an executor to read its
effective capabilities (expected: 0 unless ``runtime.cap_add``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.results import JobResults, read_results
from tests.engine.test_job_script import runner_argv, write_job

CAPEFF_COMMAND = ["sh", "-c", "grep '^CapEff:' /proc/self/status"]


def capeff_command() -> list[str]:
    return list(CAPEFF_COMMAND)


def parse_capeff(stdout: str) -> int:
    """The CapEff mask printed by ``CAPEFF_COMMAND`` (``CapEff:\\t0000000000000000``)."""
    return int(stdout.split(":", 1)[1].strip(), 16)


def run_task(
    tmp: Path,
    task: dict[str, Any],
    *,
    settings: RuntimeSettings | None = None,
    inputs: dict[str, bytes] | None = None,
    placed: list[Any] | None = None,
    timeout: float = 60,
) -> tuple[subprocess.CompletedProcess[str], Path, JobResults]:
    from tesp_api.engine.runtimes import build_runtime

    settings = settings or RuntimeSettings(type="bwrap")
    job, t = write_job(tmp, task, inputs, placed, runtime=build_runtime(settings), settings=settings)
    proc = subprocess.run(
        runner_argv(job),
        cwd=job / "working",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )
    packed = job / "working" / "tes-meta.tar"
    results = (
        read_results(packed, len(t.executors)) if packed.exists() else JobResults({}, [])
    )  # setup failed
    return proc, job, results


def tree(path: Path) -> list[str]:
    """Everything below ``path`` (names relative to it), links included, for 'nothing appeared' checks."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
