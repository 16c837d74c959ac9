"""What the engine needs from one Pulsar server: the backend port.

Two adapters implement it: ``rest.py`` (Pulsar's HTTP API: files are uploaded and fetched by this
service) and ``amqp.py`` (Pulsar's message queues: no file transfer, inputs and outputs move by
Pulsar's remote staging). The engine speaks only to this protocol.

Pulsar job id = TES task id (``<task id>-r<n>`` for a re-run, :func:`rerun_job_id`): every call is idempotent by id, so a worker that crashed half way
can repeat ``prepare`` and ``submit`` after asking ``status`` (a job Pulsar already runs is never
submitted again).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

_RERUN_JOB_ID = re.compile(r"(.+)-r[0-9]+")  # task ids are UUIDs: never "-r" in them


def rerun_job_id(task_id: str, n: int) -> str:
    """The Pulsar job id of a task's n-th re-run (engine/driver.py): a fresh job directory."""
    return f"{task_id}-r{n}"


def task_id_of(job_id: str) -> str:
    """The task a Pulsar job id belongs to: the id itself, or the task of ``<task id>-r<n>``
    (a backend that keeps per-job state in the task's record needs it)."""
    match = _RERUN_JOB_ID.fullmatch(job_id)
    return match.group(1) if match else job_id


# Pulsar states. Final: complete, cancelled, failed, lost (lost = unknown or cleaned job id).
FINAL_STATUSES = frozenset({"complete", "cancelled", "failed", "lost"})


class BackendUnavailable(Exception):
    """Pulsar could not be reached (connection error, timeout, 5xx after the retries). The
    engine waits and retries; after ``pulsar.unreachable_deadline`` the task fails."""


class BackendError(Exception):
    """Pulsar answered, but refused the request (4xx, unexpected answer): retrying will not help."""


@dataclass(frozen=True, slots=True)
class JobFile:
    """One file that must be in the job directory before it runs.

    ``kind``: ``tool`` (the job script) or ``input``. ``source`` is a local file streamed to Pulsar,
    or ``data`` small bytes; a backend without uploads (AMQP) needs ``url`` instead, from which
    Pulsar fetches the file itself (remote staging)."""

    name: str
    kind: str
    source: Path | None = None
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    job_id: str
    script_name: str  # the job script, among ``files`` with kind "tool"
    files: list[JobFile]
    # Files (relative to the job's working directory) to send back by remote staging, for
    # backends that cannot be asked for them afterwards (AMQP).
    outputs_for_remote_staging: list[str] = field(default_factory=list)
    # The command line is ``<interpreter...> <tool dir>/<script_name> <tool dir>/<script_args...>``.
    interpreter: tuple[str, ...] = ("bash",)
    script_args: tuple[str, ...] = ()  # names of other tool files, passed as absolute paths

    def command_line(self, tool_dir: str) -> str:
        """The shell-quoted command line, given the job's tool_files directory as Pulsar knows it."""
        words = [*self.interpreter, *(f"{tool_dir}/{name}" for name in (self.script_name, *self.script_args))]
        return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    status: str  # preprocessing, queued, running, postprocessing, complete, cancelled, failed, lost
    returncode: int | None = None
    stdout: str = ""  # the job's own stdout/stderr, as Pulsar reports them (cut by Pulsar)
    stderr: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    # Pulsar's "stdout" (the tool's stdout, cut to 64 KiB). Depending on Pulsar's job manager the
    # command's output is here or in ``stdout`` (queued_python: job_stdout). The job script prints
    # its small packed logs there, sparing a download (engine/job_script.py).
    tool_stdout: str = ""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_pulsar(cls, job_id: str, data: dict[str, Any]) -> JobStatus:
        rc = data.get("returncode")
        try:
            returncode = int(rc) if rc is not None else None
        except (TypeError, ValueError):
            returncode = None
        return cls(
            job_id=job_id,
            status=str(data.get("status", "lost")),
            returncode=returncode,
            stdout=str(data.get("job_stdout") or ""),
            stderr=str(data.get("job_stderr") or ""),
            raw=data,
            tool_stdout=str(data.get("stdout") or ""),
        )


# JobStatus.raw key: why a backend reports a job "lost" (task-log safe text; the driver writes it
# into the task's system_logs). A backend that finds out itself that a job Pulsar still calls
# running is dead (pulsar/liveness.py) reports it "lost" with this reason.
LOST_REASON_KEY = "tesp_lost_reason"

# JobStatus.raw key on a non-final answer: the backend asks the driver to submit the job once more
# and says why (task-log safe text, for system_logs). REST: a job Pulsar has answered queued for
# ``pulsar.lost_job_deadline`` whose runner never started (pulsar/liveness.py: a restarted Pulsar
# may have dropped it from its queue). AMQP: a job Pulsar has answered preprocessing as long (it
# died setting the job up: pulsar/amqp.py). The runner's tes-started guard makes a double start harmless.
RESUBMIT_KEY = "tesp_resubmit"


@dataclass(frozen=True, slots=True)
class Liveness:
    """A backend's verdict on a job Pulsar reports non-final: ``alive`` False means it cannot
    finish any more (its process is gone although Pulsar says it runs); ``reason`` says why."""

    alive: bool
    reason: str = ""


@runtime_checkable
class LivenessProbe(Protocol):
    """Optional, beside ``PulsarBackend``: the driver asks ``liveness`` while Pulsar keeps
    answering non-final for a started job, at most every ``pulsar.status.poll_interval``, and ends
    the task PREEMPTED (lost work) when the answer is not alive. How long a job may show no sign of
    life before it is called dead is the backend's ``pulsar.lost_job_deadline``. A backend without
    it is judged by Pulsar's answers alone."""

    async def liveness(self, job_id: str) -> Liveness: ...


@runtime_checkable
class PulsarBackend(Protocol):
    name: str  # the configured server name, recorded in the task's backend data

    async def prepare(self, spec: JobSpec) -> None:
        """Create the job and put its files in place (REST: setup + uploads). Idempotent."""

    async def submit(self, spec: JobSpec) -> None:
        """Start the job's script. Call once, after ``status`` said the job was not started."""

    async def status(self, job_id: str) -> JobStatus: ...

    async def cancel(self, job_id: str) -> None:
        """Kill the job's processes (Pulsar kills the whole process tree)."""

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        """Stream a file of the job's working directory to ``dest``; False when it is missing
        (or the backend cannot fetch files)."""

    async def clean(self, job_id: str) -> None:
        """Remove the job directory on the Pulsar side. Idempotent."""

    async def aclose(self) -> None: ...
