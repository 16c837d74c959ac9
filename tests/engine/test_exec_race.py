"""What proves that Pulsar's shell never started a job's runner (tesp_api/engine/exec_race.py).

The statuses are shaped as pulsar-app 0.16's REST status answer for a job whose command.sh failed to
exec (tests/e2e/test_pulsar_text_busy.py makes one for real and runs it through tesp-api).
"""

from __future__ import annotations

from typing import Any

from tesp_api.engine.exec_race import RUNNER_STARTED, script_never_ran
from tesp_api.pulsar.port import JobStatus

BUSY = "/bin/sh: 1: /srv/pulsar/staging/t1/command.sh: Text file busy\n"
NOT_STARTED = ["metadata", "return_code", "command.sh", "working", "tool_files"]


def pulsar_status(**fields: Any) -> JobStatus:
    body = {
        "status": "complete",
        "returncode": 126,
        "job_stderr": BUSY,
        "job_directory_contents": NOT_STARTED,
    }
    return JobStatus.from_pulsar("t1", {**body, **fields})


def test_a_text_busy_exec_failure_without_the_runner_guard_never_ran() -> None:
    assert script_never_ran(pulsar_status())


def test_a_job_whose_runner_made_its_guard_ran_whatever_its_stderr_says() -> None:
    assert not script_never_ran(pulsar_status(job_directory_contents=[*NOT_STARTED, RUNNER_STARTED]))


def test_another_exit_code_is_not_the_exec_failure() -> None:
    assert not script_never_ran(pulsar_status(returncode=1))


def test_exit_126_with_another_message_is_not_the_exec_failure() -> None:
    assert not script_never_ran(pulsar_status(job_stderr="tesp-api: docker: permission denied\n"))


def test_the_message_must_be_the_last_line_of_the_job_stderr() -> None:
    assert not script_never_ran(pulsar_status(job_stderr=BUSY + "something ran after it\n"))


def test_a_status_without_the_job_directory_listing_proves_nothing() -> None:
    assert not script_never_ran(pulsar_status(job_directory_contents=None))
