"""The runner's heartbeat timer is off once the job is done.

Python's finalization puts SIGALRM back to its default action (terminate) while an interval timer
still runs: a beat landing in that window killed finished runners with exit 142 ("Alarm clock"),
seen in 6 of 200 tasks of a loaded benchmark burst. The window cannot be hit on demand, so this
checks the condition that closes it: after ``Runner.run()`` returns, no timer is armed and SIGALRM
is ignored (a subprocess runs the real runner file on a real job directory, bubblewrap executor).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tesp_api.engine.runner import RUNNER_PATH
from tests.engine.test_job_script import write_job

PROBE = """
import runpy, signal, sys
ns = runpy.run_path(sys.argv[1])
rc = ns["Runner"](sys.argv[2]).run()
print(rc, signal.getitimer(signal.ITIMER_REAL), signal.getsignal(signal.SIGALRM) == signal.SIG_IGN)
"""


def test_no_heartbeat_can_fire_after_the_runner_is_done(tmp_path: Path) -> None:
    job, _ = write_job(tmp_path, {"executors": [{"image": "alpine", "command": ["true"]}]})
    spec = job / "tool_files" / "tes-job.json"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(RUNNER_PATH), str(spec)],
        cwd=job / "working",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "0 (0.0, 0.0) True", proc.stdout
