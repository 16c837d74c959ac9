"""Jobs a restarted Pulsar lost track of (REST): tell a live job from a finished or a dead one.

Why this exists (pulsar-app 0.16, ``queued_python``, read off pulsar/managers/queued.py, unqueued.py
and stateful.py): a job's process runs in its own process group, so killing Pulsar (kill -9, OOM, a
crash) leaves it running. Pulsar deletes the job's ``command_line`` file when it starts the job, so
after a restart ``recover_active_jobs`` fails for every job that had started ("Failed to recover
active job ... Cannot recover job" or FileNotFoundError .../command_line) and drops it from its
active list: no thread waits for the process any more, nobody removes the job's ``pid`` file, and
``GET /jobs/{id}/status`` answers ``running`` for ever (``queued``, when Pulsar died between
starting the job and recording its pid: seen in the crash runs), whether the process has finished (its
``return_code`` and our ``tes-meta.tar`` are there) or was killed. Over REST only the job's working,
outputs and metadata directories can be read, not ``pid`` or ``return_code``.

So the job runner keeps a heartbeat, ``working/tes-alive``: a counter it rewrites every
``BEAT_SECONDS`` and ``done`` at its end (tesp_api/engine/runner/tes_runner.py); REST ``prepare``
uploads it as ``0``, so it is never missing (Pulsar logs a missing file's request URL, token and
all). While Pulsar answers ``running``, this watch reads it at most every ``check_every`` seconds;
when it has not changed for ``lost_after`` seconds (``pulsar.lost_job_deadline``) the runner is
gone although Pulsar says it runs:

* the file says ``done``: the runner finished (it writes that after ``tes-meta.tar``). The job's
  real result is read as for any completed job: ``complete`` (returncode unknown: the executors'
  exit codes, which the archive holds, decide).
* a counter that stopped: the runner was killed (a job that never beat: ``tes-meta.tar`` decides).
  The job is reported ``lost``: lost work, which the engine ends as PREEMPTED (the spec's state
  for a task the system stopped).

The verdict names what happened in ``raw[LOST_REASON_KEY]`` (for the task's system_logs).
A job run by an older runner without a heartbeat is judged the same way after ``lost_after``.

A job Pulsar answers ``queued`` for is judged as above once it was seen beating (Pulsar killed between
starting it and recording its pid). One whose runner never started (the heartbeat still ``0``) may
have been dropped: Pulsar killed after taking it off its queue (``run_next`` deletes ``command_line``)
and before starting it; the restarted Pulsar cannot recover it, takes it off its active list and
answers ``queued`` (or ``preprocessing``, killed inside the submit) for ever (1 to 2 of 100-300 in the
crash runs). So a job answered ``queued``/``preprocessing`` with no beat for ``lost_after`` since this
watch first saw it (about our submit) is handed back with ``raw[RESUBMIT_KEY]``: the driver submits
it once more. What a second ``POST /jobs/{id}/submit`` does (pulsar/manager_endpoint_util.py
``submit_job``): a job Pulsar still holds (on its active list: really queued, or started meanwhile) is
ignored ("Ignoring duplicate setup message"), so re-submitting a job that only waits long in a full
queue is harmless; a dropped one (off the active list) goes through ``preprocess_and_launch`` again:
``launch`` rewrites ``command_line`` and puts it at the end of the work queue, and it runs. (Should a
runner start twice anyway, its ``tes-started`` guard makes the second exit 75 at once.)

After the re-submit no clock decides: a job legitimately waiting in a full Pulsar may wait for hours.
The job is reported ``lost`` (it never ran: PREEMPTED) only when it is overtaken again: a job first
seen more than ``lost_after`` after the re-submit has started while it still waits (Pulsar's queue is
first in, first out, and the re-submit put it at its end).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tesp_api.pulsar.port import LOST_REASON_KEY, RESUBMIT_KEY, BackendUnavailable, JobStatus

log = logging.getLogger(__name__)

ALIVE_NAME = "tes-alive"  # the runner's ALIVE (the runner imports nothing from tesp_api)
META_NAME = "tes-meta.tar"
BEAT_SECONDS = 5.0  # the runner's BEAT
NO_BEAT_YET = b"0\n"  # uploaded with the job (REST prepare); the runner counts from 1
DONE = b"done\n"  # the runner's last word, written after tes-meta.tar
DEFAULT_LOST_AFTER = 120.0
WAITING = ("queued", "preprocessing")  # Pulsar's answers for a job it has not started (or says so)

Fetch = Callable[[str, str, Path], Awaitable[bool]]


@dataclass
class _Watch:
    beat: bytes | None  # the last counter read (None: none seen yet)
    changed: float  # monotonic time it last changed (or the watch began)
    checked: float  # monotonic time of the last read
    first_seen: float = 0.0  # monotonic time this watch first saw the job (queued or running)
    resubmitted: float | None = None  # monotonic time the job was handed back for a re-submit


class HeartbeatWatch:
    """Per backend: the heartbeat of each job Pulsar reports ``running``, in memory (a new process
    starts each watch afresh, which only delays a verdict by at most ``lost_after``)."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        lost_after: float = DEFAULT_LOST_AFTER,
        check_every: float = BEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.lost_after = lost_after
        self.check_every = check_every
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self._scratch: Path | None = None
        # The latest first sight of a job seen started (running, beating or final): Pulsar's queue is
        # FIFO, so a job still queued although one first seen over ``lost_after`` after it started was
        # dropped from Pulsar's queue (Pulsar killed between dequeuing it and starting it).
        self._newest_started = float("-inf")

    def forget(self, job_id: str) -> None:
        watch = self._watches.pop(job_id, None)
        if watch is not None:
            self._started(watch)

    def _started(self, watch: _Watch) -> None:
        self._newest_started = max(self._newest_started, watch.first_seen)

    async def review(self, status: JobStatus) -> JobStatus:
        """``status`` as Pulsar answered it, or, for a ``running`` job whose runner is gone, what
        really happened (``complete`` or ``lost``). ``queued`` is judged too once a heartbeat was seen:
        Pulsar killed between starting the job and recording its pid answers ``queued`` for ever.
        A waiting job whose runner never started is handed back once for a re-submit, then ``lost``
        only when overtaken (see the module's docstring)."""
        job_id = status.job_id
        if status.status not in ("running", *WAITING):
            if status.is_final:
                self.forget(job_id)
            return status
        queued = status.status in WAITING
        now = self._clock()
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch(None, now, float("-inf"), now)
        if not queued:
            self._started(watch)
        # A queued job may wait long in Pulsar's queue: looked at less often.
        every = max(self.check_every, self.lost_after / 4) if queued else self.check_every
        if now - watch.checked < every:
            return status
        watch.checked = now
        try:
            beat = await self._read(job_id, ALIVE_NAME)
            if beat == NO_BEAT_YET:
                beat = None
            if beat is not None and beat != watch.beat:
                watch.beat, watch.changed = beat, now
                self._started(watch)
                return status
            if queued and watch.beat is None:
                watch.changed = now  # never started: queued (or dropped), no heartbeat to judge
                if watch.resubmitted is None:
                    if now - watch.first_seen >= self.lost_after:  # (before any overtaking could tell)
                        watch.resubmitted = now
                        return self._resubmit(status, now - watch.first_seen)
                elif self._newest_started - watch.resubmitted > self.lost_after:
                    return self._dropped(status)
                return status
            if now - watch.changed < self.lost_after:
                return status
            if watch.beat == DONE:
                finished = True  # the runner's last word, after tes-meta.tar
            elif watch.beat is not None:
                finished = False  # beats that stopped without "done": killed
            else:  # never a beat (a runner older than the heartbeat): ask for tes-meta.tar itself
                finished = await self._read(job_id, META_NAME) is not None
        except BackendUnavailable:
            return status  # no verdict on a Pulsar we cannot read; the driver's own deadline applies
        self.forget(job_id)
        silent = f"its runner's heartbeat has not changed for {self.lost_after:.0f} s"
        if finished:
            reason = (
                f"Pulsar still reported the job running, but {silent} and the runner had finished "
                "(Pulsar was restarted while the job ran and lost track of it): its result was read "
                "from the job directory"
            )
            log.warning("job %s: %s", job_id, reason)
            return JobStatus(job_id, "complete", None, raw={**status.raw, LOST_REASON_KEY: reason})
        reason = (
            f"Pulsar still reported the job running, but {silent} and the runner never finished: "
            "the job's processes were killed (Pulsar or its host restarted while the job ran)"
        )
        log.warning("job %s: %s", job_id, reason)
        return JobStatus(job_id, "lost", None, raw={**status.raw, LOST_REASON_KEY: reason})

    def _resubmit(self, status: JobStatus, waited: float) -> JobStatus:
        reason = (
            f"Pulsar has reported the job {status.status} for {waited:.0f} s and its runner has not "
            "started: submitted to Pulsar once more (a Pulsar restarted after taking a job off its "
            "queue and before starting it never starts it; one that still holds the job ignores the "
            "repeat)"
        )
        log.warning("job %s: %s", status.job_id, reason)
        return dataclasses.replace(status, raw={**status.raw, RESUBMIT_KEY: reason})

    def _dropped(self, status: JobStatus) -> JobStatus:
        self.forget(status.job_id)
        reason = (
            "Pulsar still reported the job queued after it was submitted again, but jobs submitted "
            "well after that have started and its runner never did: Pulsar will not start it"
        )
        log.warning("job %s: %s", status.job_id, reason)
        return JobStatus(status.job_id, "lost", None, raw={**status.raw, LOST_REASON_KEY: reason})

    async def _read(self, job_id: str, name: str) -> bytes | None:
        """A small file of the job's working directory, or None when it is missing."""
        if self._scratch is None:
            self._scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tesp-liveness-"))
        dest = self._scratch / f"{job_id}.{name}"
        if not await self._fetch(job_id, name, dest):
            return None
        data = await asyncio.to_thread(dest.read_bytes)
        await asyncio.to_thread(dest.unlink, True)
        return data

    def close(self) -> None:
        self._watches.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
