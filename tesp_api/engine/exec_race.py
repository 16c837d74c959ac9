"""A Pulsar job whose ``command.sh`` could not be exec'd ("Text file busy"): proof that nothing of it ran.

Why (docs/runtimes.md, tesp_api/pulsar/serve.py): pulsar-app 0.16 writes a job's ``command.sh`` and
has ``/bin/sh -c <path>`` exec it while another of its threads may have forked a child that still
holds the file open for writing; the exec then fails with ETXTBSY, the shell prints
``<path>/command.sh: Text file busy`` and exits 126. Our ``tesp_api.pulsar.serve`` launcher avoids
the race, but an operator's own Pulsar (REST or AMQP) and ``pulsar-main`` without it do not: about
1 task in 300 under bursts would end SYSTEM_ERROR although nothing of it ran.

The driver submits such a job again (a fresh ``<task id>-r<n>``, at most :data:`MAX_RERUNS` times)
only when Pulsar's own final status proves the job runner never started, so no executor can have run:

* ``returncode`` 126 (the shell's "cannot execute");
* the job's stderr (Pulsar's ``job_stderr``) ends with ``command.sh: Text file busy``;
* Pulsar lists the job directory (``job_directory_contents``, in every REST status answer and AMQP
  status update of pulsar-app 0.16) and the runner's first act, ``mkdir <job>/tes-started``
  (tesp_api/engine/runner/tes_runner.py ``Runner.run``, before anything else, before any executor),
  is not in it;
* and the runner's logs (``tes-meta.tar``) are not there (the caller checks: no inline logs and the
  download found nothing).

Anything else, 126 included (an executor that exited 126, the runner's own failures: the runner
made ``tes-started`` then), keeps its usual outcome. A task cannot forge this: what an executor
prints goes to the runner's log files, and whatever reaches the job's stderr comes after
``tes-started`` exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from tesp_api.pulsar.port import JobStatus
from tesp_api.pulsar.serve import JOB_SCRIPT

EXEC_FAILED_EXIT = 126  # sh: the file exists but cannot be executed
BUSY_MESSAGE = f"{JOB_SCRIPT}: Text file busy"
RUNNER_STARTED = "tes-started"  # the runner's guard directory, its first write (tes_runner.py)
MAX_RERUNS = 3  # the race is about 1 in 300: three misses in a row mean something else is wrong

__all__ = ["BUSY_MESSAGE", "MAX_RERUNS", "RUNNER_STARTED", "script_never_ran"]


def script_never_ran(status: JobStatus) -> bool:
    """True when Pulsar's final ``status`` proves its shell could not exec the job's ``command.sh``
    (Text file busy) and the job runner never started; False when unsure (anything missing)."""
    if status.returncode != EXEC_FAILED_EXIT:
        return False
    lines = [line for line in status.stderr.splitlines() if line.strip()]
    if not lines or not lines[-1].rstrip().endswith(BUSY_MESSAGE):
        return False
    contents = status.raw.get("job_directory_contents")
    if not isinstance(contents, Sequence) or isinstance(contents, str):
        return False  # a Pulsar that does not list the job directory: no proof
    return RUNNER_STARTED not in contents
