"""The fixed job runner (``tes_runner.py``, stdlib only) and the names of the files it is sent with.

The runner is uploaded to Pulsar as a tool file together with the job's spec (``tes-job.json``, built
by engine/job_script.py) and run as ``<runtime.runner_python> -I -S tes_runner.py tes-job.json``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

RUNNER_NAME = "tes_runner.py"
SPEC_NAME = "tes-job.json"
RUNNER_PATH = Path(__file__).with_name(RUNNER_NAME)


@cache
def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()
