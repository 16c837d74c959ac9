"""Drives ONE claimed task to its end: QUEUED -> INITIALIZING -> RUNNING -> final, then cleanup.

The driver is given what it uses (``DriverContext``: settings sections, store, backend lookup,
staging, runtime, worker id, counters), never the engine: driver.py imports nothing of engine.py.

Every step is safe to repeat, because a crashed worker's task is claimed again and driven from
whatever state the store says:

* QUEUED: compare-and-set to INITIALIZING, choosing the Pulsar server and the Pulsar job id
  (``backend.server``, ``backend.job_id``: the task id; ``<task id>-r<n>`` for a re-run).
* INITIALIZING, not yet submitting: build the job spec (the fixed runner runs it), stage inputs,
  ``prepare`` (Pulsar setup + uploads: idempotent by job id), then record ``backend.submitting``
  by a compare-and-set that expects INITIALIZING *before* submitting: a cancel that lands first
  makes it fail, so a cancelled task never starts. The state stays INITIALIZING.
* INITIALIZING submitting, or RUNNING: submit unless Pulsar already knows the job as started
  (``backend.submitted`` or a Pulsar status past "preprocessing"); the job runner itself refuses
  to run twice. Poll status every ``pulsar.status.poll_interval``; the first status that says the
  job runs (running, postprocessing, complete) moves the task to RUNNING, as the spec defines it.
  Between polls re-read the store (a cancel by another process) or be woken by ``notify_cancel``.
* Pulsar final: read the executor logs, upload outputs, compare-and-set to the final state. If a
  cancel won meanwhile, the logs and outputs gathered are still written (without a state change).
* Pulsar lost the job after it was submitted (``lost``, or a ``liveness`` probe saying it is dead):
  lost work, PREEMPTED with the reason; or, with ``engine.rerun_lost``, a fresh Pulsar job.
* Pulsar's shell could not exec the job's command.sh ("Text file busy", exit 126, the runner never
  started: engine/exec_race.py): a fresh Pulsar job, a few times at most (not a SYSTEM_ERROR).
* Final in the store but still ``active``: kill the Pulsar job if it may run, clean its directory,
  then ``active=False`` (the task is done for good).

A lost lease raises LeaseLost at the first store write that needs it: the driver stops at once.
Pulsar unreachable: the backend's one retry policy (pulsar/retrying.py) retries each call with
backoff; its callback lets the driver state the outage in the task's system_logs once (not per
retry); after ``pulsar.unreachable_deadline`` the call gives up and the task becomes SYSTEM_ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tesp_api import log_context
from tesp_api.engine.context import DriverContext
from tesp_api.engine.exec_race import MAX_RERUNS as MAX_BUSY_RERUNS
from tesp_api.engine.exec_race import script_never_ran
from tesp_api.engine.file_mapper import FileMapper, PathError, has_wildcard, host_rel, wildcard_base
from tesp_api.engine.job_script import (
    ALREADY_RAN_EXIT,
    INLINE_META_BEGIN,
    INLINE_META_END,
    META_TAR,
    SCRIPT_NAME,
    SPEC_NAME,
    PlacedInput,
    build_job_spec,
    input_upload_name,
    out_rel,
    spec_bytes,
)
from tesp_api.engine.results import inline_meta, read_results
from tesp_api.engine.runner import runner_source
from tesp_api.engine.staging import StagingError
from tesp_api.pulsar.port import (
    LOST_REASON_KEY,
    RESUBMIT_KEY,
    BackendError,
    BackendUnavailable,
    JobFile,
    JobSpec,
    JobStatus,
    Liveness,
    PulsarBackend,
    rerun_job_id,
)
from tesp_api.pulsar.retrying import retry_listener
from tesp_api.store.port import LogPatch, TaskRecord
from tesp_api.tes.models import TesExecutorLog, TesState, TesTask
from tesp_api.tes.states import FINAL_STATES, sources_of

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_POLL = 0.05  # seconds; x1.5 after each poll, up to pulsar.status.poll_interval
# While polling, the store is re-read (a cancel made by another process) at most this often; a
# cancel in this process wakes the driver at once (Engine.notify_cancel).
STORE_RECHECK = 2.0
STARTED_STATUSES = frozenset({"queued", "running", "postprocessing", "complete", "cancelled", "failed"})
# Pulsar statuses that say the job's command has started: the task is RUNNING from then on.
RAN_STATUSES = frozenset({"running", "postprocessing", "complete"})
DRIVEN_STATES = frozenset({TesState.INITIALIZING, TesState.RUNNING})
# backend keys counting the task's re-runs (lost work; command.sh not exec'd): their sum names the next job
RERUN_COUNTERS = ("reruns", "busy_reruns")
LOST_DEFAULT_REASON = (
    "Pulsar does not know the job any more (lost): most likely Pulsar was restarted while the job ran "
    "and cannot re-attach to it, or its job directory was removed"
)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class GiveUp(Exception):
    """The task cannot go on: it ends in SYSTEM_ERROR with this (task-log safe) reason."""


class LeaseLost(Exception):
    """Another worker owns the task now (or it was deleted): stop touching it."""


class TaskDriver:
    def __init__(self, ctx: DriverContext, record: TaskRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.task_id = record.id
        self.wake = asyncio.Event()
        self._said_unreachable = False  # the current outage is stated in system_logs already
        self._fresh = False  # this driver moved the task out of QUEUED (no earlier attempt exists)
        self._finished = False  # this driver let the task go for good (active=False written)
        self._liveness_due = 0.0
        self._scratch = Path(ctx.engine.work_dir) / self.task_id

    @property
    def job_id(self) -> str:
        """The Pulsar job id: the task id, or ``<task id>-r<n>`` for the n-th re-run of lost work."""
        return str(self.record.backend.get("job_id") or self.task_id)

    # ---- store helpers -------------------------------------------------------------------------
    async def _update(self, *, expected: frozenset[TesState] | None = None, **kw: Any) -> TaskRecord | None:
        """One write conditioned on this worker's lease (and on ``expected`` states when given).

        Raises LeaseLost when the lease is gone (or the task deleted); returns None only when the
        state condition failed (the record is re-read then): a write never fails quietly."""
        rec = await self.ctx.store.update(
            self.task_id, lease_owner=self.ctx.worker_id, expected=expected, **kw
        )
        if rec is not None:
            self.record = rec
            return rec
        await self._reread()  # LeaseLost if the lease is not ours any more
        if expected is None:
            raise LeaseLost("the store refused a write conditioned on this worker's lease")
        return None

    async def _reread(self) -> TaskRecord:
        rec = await self.ctx.store.get(self.task_id)
        if rec is None:
            raise LeaseLost("task deleted")
        if rec.lease_owner != self.ctx.worker_id:
            raise LeaseLost(f"lease now held by {rec.lease_owner}")
        self.record = rec
        return rec

    async def _move(self, state: TesState, log_patch: LogPatch | None = None, **kw: Any) -> TaskRecord | None:
        """Compare-and-set to ``state``; None (and the record re-read) when the state moved meanwhile."""
        kw.setdefault("expected", sources_of(state))
        return await self._update(state=state, log=log_patch, **kw)

    # ---- Pulsar helpers ------------------------------------------------------------------------
    @property
    def backend(self) -> PulsarBackend:
        return self.ctx.backend_for(self.record)

    async def _pulsar(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Pulsar call. Retrying is the backend's (pulsar/retrying.py, the one retry policy:
        up to ``pulsar.unreachable_deadline``); what reaches here has given up: SYSTEM_ERROR."""
        try:
            result = await call()
        except BackendUnavailable as exc:
            raise GiveUp(str(exc)) from None
        self._said_unreachable = False  # reachable again: a later outage is stated again
        return result

    async def _on_retry(self, exc: BackendUnavailable, waited: float) -> None:
        """The retry policy's callback (``retry_listener``), before each wait for Pulsar."""
        await self._say_unreachable(exc)

    async def _say_unreachable(self, exc: BackendUnavailable) -> None:
        """The task's system_logs say why it waits, once per outage (not per retry)."""
        if self._said_unreachable:
            return
        self._said_unreachable = True
        server = self.record.backend.get("server") or self.backend.name
        deadline = self.ctx.pulsar.unreachable_deadline
        line = (
            f"Pulsar server {server} is unreachable ({exc}); waiting for it, for at most "
            f"{deadline:.0f}s (pulsar.unreachable_deadline)"
        )
        await self._update(log=LogPatch(system_logs=[line]))

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or less when woken (notify_cancel): True when woken."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            pass
        woken = self.wake.is_set()
        self.wake.clear()
        return woken

    # ---- the state machine ---------------------------------------------------------------------
    async def run(self) -> None:
        # Every log line written while driving this task (here, in the Pulsar clients, transfers and
        # threads they start) names the task, this worker and, once chosen, the Pulsar server.
        context = log_context.bind(
            task_id=self.task_id,
            worker_id=self.ctx.worker_id,
            pulsar_server=self.record.backend.get("server"),
        )
        try:
            with retry_listener(self._on_retry):  # this driver's Pulsar calls only (a contextvar)
                await self._drive()
        except LeaseLost as exc:
            log.warning("stopped driving it (%s)", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a task half-driven without a word in its log
            log.exception("internal error")
            try:
                await self._fail(f"internal error in the engine: {type(exc).__name__}: {exc}")
                await self._finish()
            except Exception:
                log.exception("could not record the internal error")
        finally:
            log_context.reset(context)
        # Only once the task is done for good: the scratch directory holds inputs a restarted
        # service (same work_dir) may still have to serve, and a lost lease leaves it to the
        # worker that drives the task now.
        if self._finished:
            await asyncio.to_thread(shutil.rmtree, self._scratch, True)

    async def _drive(self) -> None:
        while True:
            state = self.record.state
            if state in FINAL_STATES:
                await self._finish()
                return
            try:
                if state == TesState.QUEUED:
                    await self._queued()
                elif state == TesState.INITIALIZING and not self.record.backend.get("submitting"):
                    await self._initializing()
                else:  # submitting (INITIALIZING until Pulsar runs it), RUNNING; PAUSED/CANCELING unused
                    await self._running()
            except GiveUp as exc:
                await self._fail(str(exc))

    async def _fail(self, reason: str) -> None:
        log.warning("SYSTEM_ERROR: %s", reason)
        await self._move(
            TesState.SYSTEM_ERROR, LogPatch(end_time=now_rfc3339(), system_logs=[f"SYSTEM_ERROR: {reason}"])
        )

    async def _queued(self) -> None:
        server = self.ctx.choose_server(self.record)
        await self._move(
            TesState.INITIALIZING,
            LogPatch(
                start_time=now_rfc3339(),
                system_logs=[f"worker {self.ctx.worker_id}: Pulsar server {server}"],
            ),
            expected=frozenset({TesState.QUEUED}),
            backend={"server": server, "job_id": self.task_id},
        )
        log_context.bind(pulsar_server=self.record.backend.get("server"))  # reset when run() ends
        self._fresh = self.record.state == TesState.INITIALIZING

    def _spec(self, files: list[JobFile]) -> JobSpec:
        python = self.ctx.runtime_settings.runner_python
        return JobSpec(
            job_id=self.job_id,
            script_name=SCRIPT_NAME,
            files=files,
            outputs_for_remote_staging=remote_staging_outputs(self.record.task),
            interpreter=(python, "-I", "-S"),
            script_args=(SPEC_NAME,),
        )

    async def _initializing(self) -> None:
        task = self.record.task
        runtime = self.ctx.runtime()
        try:
            mapper = FileMapper(task, map_workdirs=runtime.needs_workdir_mount)
        except PathError as exc:
            raise GiveUp(str(exc)) from None
        # Asking Pulsar first matters only when an earlier attempt may have got this far: a task this
        # driver has just taken out of QUEUED cannot be known to Pulsar yet.
        if not self._fresh:
            status = await self._pulsar(lambda: self.backend.status(self.job_id))
            if status.status in STARTED_STATUSES:
                # Pulsar runs (or ran) this job already: a crash after the submit. Never submit twice.
                await self._update(backend={"submitting": True, "submitted": True})
                return
        files, placed = await self._stage_inputs()
        job = build_job_spec(
            task,
            self.job_id,
            runtime,
            mapper,
            placed,
            tail_bytes=self.ctx.engine.log_tail_bytes,
            settings=self.ctx.runtime_settings,
        )
        files[:0] = [
            JobFile(name=SCRIPT_NAME, kind="tool", data=runner_source()),
            JobFile(name=SPEC_NAME, kind="tool", data=spec_bytes(job)),
        ]
        spec = self._spec(files)
        try:
            await self._pulsar(lambda: self.backend.prepare(spec))
        except BackendError as exc:
            raise GiveUp(f"Pulsar refused the job: {exc}") from None
        # Recorded before the submit, by a compare-and-set on INITIALIZING: a cancel that got in
        # first wins, and the job never starts. The state stays INITIALIZING until Pulsar runs it.
        if (
            await self._update(expected=frozenset({TesState.INITIALIZING}), backend={"submitting": True})
            is None
        ):
            return
        await self._submit()

    async def _stage_inputs(self) -> tuple[list[JobFile], list[PlacedInput]]:
        files: list[JobFile] = []
        placed: list[PlacedInput] = []
        scratch = self._scratch / "inputs"
        for i, inp in enumerate(self.record.task.inputs or []):
            if inp.content is not None:
                name = input_upload_name(i, False)
                files.append(JobFile(name=name, kind="input", data=inp.content.encode()))
                placed.append(PlacedInput(name, inp.path))
                continue
            if not inp.url:
                raise GiveUp(f"inputs[{i}] ({inp.path}) has neither url nor content")
            await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
            try:
                local, is_archive = await self.ctx.staging().fetch_input(i, inp, scratch)
            except StagingError as exc:
                raise GiveUp(str(exc)) from None
            name = input_upload_name(i, is_archive)
            files.append(JobFile(name=name, kind="input", source=local))
            placed.append(PlacedInput(name, inp.path, is_archive))
        return files, placed

    async def _submit(self) -> None:
        spec = self._spec([])
        try:
            await self._pulsar(lambda: self.backend.submit(spec))
        except BackendError as exc:
            raise GiveUp(f"Pulsar refused the submit: {exc}") from None
        await self._update(backend={"submitted": True})
        self.ctx.counters.count_submit()

    async def _running(self) -> None:
        poll = self.ctx.pulsar.status.poll_interval
        # Short jobs end soon: poll quickly at first, then back off to the configured interval; start
        # over when Pulsar starts running the job (it may have waited long in Pulsar's queue).
        delay = min(FIRST_POLL, poll)
        last = ""
        recheck_at = time.monotonic() + STORE_RECHECK
        while True:
            status = await self._pulsar(lambda: self.backend.status(self.job_id))
            self.ctx.counters.count_poll()
            if status.status == "preprocessing" and not self.record.backend.get("submitted"):
                await self._submit()  # the crash fell between "submitting" and the submit's record
                continue
            if not status.is_final and status.raw.get(RESUBMIT_KEY):
                await self._resubmit(str(status.raw[RESUBMIT_KEY]))
            if (
                status.status in RAN_STATUSES
                and self.record.state == TesState.INITIALIZING
                and await self._move(TesState.RUNNING) is None
            ):
                return  # cancelled (or ended by someone else): _drive takes over
            if status.is_final:
                await self._pulsar_final(status)
                return
            if status.status == "running" and await self._is_dead():
                return
            if status.status == "running" and last != "running":
                delay = min(FIRST_POLL, poll)
            last = status.status
            woken = await self._wait_next_poll(delay)
            delay = min(delay * 1.5, poll)
            if woken or time.monotonic() >= recheck_at:
                recheck_at = time.monotonic() + STORE_RECHECK
                rec = await self._reread()
                if rec.state not in DRIVEN_STATES:
                    return  # cancelled (or ended by someone else): _drive takes over

    async def _resubmit(self, reason: str) -> None:
        """The backend saw the job wait long without its runner starting (REST, pulsar/liveness.py:
        a restarted Pulsar may have dropped it from its queue): submitted once more, said in
        system_logs. A refusal is only logged: the backend's later verdict decides."""
        await self._update(log=LogPatch(system_logs=[reason]))
        spec = self._spec([])
        try:
            await self._pulsar(lambda: self.backend.submit(spec))
        except BackendError as exc:
            log.warning("Pulsar refused the re-submit of job %s: %s", self.job_id, exc)

    async def _is_dead(self) -> bool:
        """Ask the backend's optional liveness probe (port.LivenessProbe), at most every poll
        interval, whether a job Pulsar calls running can still finish; end the task if not."""
        probe: Callable[[str], Awaitable[Liveness]] | None = getattr(self.backend, "liveness", None)
        now = time.monotonic()
        if probe is None or now < self._liveness_due:
            return False
        self._liveness_due = now + self.ctx.pulsar.status.poll_interval
        try:
            verdict = await probe(self.job_id)
        except (BackendUnavailable, BackendError) as exc:  # no verdict: the next status poll decides
            log.info("liveness of Pulsar job %s unknown: %s", self.job_id, exc)
            return False
        if verdict.alive:
            return False
        await self._lost(
            verdict.reason or "the job's process is gone although Pulsar reports it running", kill=True
        )
        return True

    async def _wait_next_poll(self, poll: float) -> bool:
        """A backend that pushes updates (AMQP: ``wait_for_change``) wakes the driver when Pulsar reports;
        the store is then only re-checked every ``pulsar.amqp_reconcile_after`` (a cancel in this
        process wakes the driver at once). Other backends are polled every ``poll`` seconds."""
        wait_for_change = getattr(self.backend, "wait_for_change", None)
        if wait_for_change is None:
            return await self._sleep(poll)
        recheck = max(poll, self.ctx.pulsar.amqp_reconcile_after)
        waiters = {
            asyncio.ensure_future(wait_for_change(self.job_id, recheck)),
            asyncio.ensure_future(self.wake.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        woken = self.wake.is_set()
        self.wake.clear()
        return woken

    async def _lost(self, reason: str, *, kill: bool = False) -> None:
        """Pulsar lost the job after it was submitted: lost work. PREEMPTED (the spec's state for a
        task the system stopped, which workflow engines retry), or with ``engine.rerun_lost`` a
        fresh Pulsar job (:meth:`_rerun`), each re-run stated in system_logs."""
        reruns = int(self.record.backend.get("reruns") or 0)
        allowed = self.ctx.engine.rerun_lost
        log.warning("lost work (Pulsar job %s): %s", self.job_id, reason)
        if reruns < allowed:
            n = reruns + 1
            await self._rerun(
                f"{reason}; re-run {n} of {allowed} (engine.rerun_lost)", {"reruns": n}, kill=kill
            )
            return
        note = f" (re-run {reruns} time(s) already, engine.rerun_lost = {allowed})" if reruns else ""
        await self._move(
            TesState.PREEMPTED,
            LogPatch(end_time=now_rfc3339(), system_logs=[f"PREEMPTED: lost work: {reason}{note}"]),
        )

    async def _rerun(self, why: str, counters: dict[str, int], *, kill: bool = False) -> None:
        """The task again as a fresh Pulsar job ``<task id>-r<n>``, n counting every re-run of the
        task whatever its cause (a new job directory: the old one may hold the runner's "already
        ran" guard); the old job is killed (``kill``: Pulsar still calls it running) and cleaned,
        the task back to INITIALIZING, ``why`` and the new job id stated in system_logs."""
        backend = self.record.backend
        n = 1 + sum(int(backend.get(key) or 0) for key in RERUN_COUNTERS)
        old_job, new_job = self.job_id, rerun_job_id(self.task_id, n)
        try:
            if kill:  # nothing of it may run beside the re-run
                await self._pulsar(lambda: self.backend.cancel(old_job))
            if not self.ctx.pulsar.keep_job_directories:
                await self._pulsar(lambda: self.backend.clean(old_job))
        except (GiveUp, BackendError) as exc:
            log.warning("could not kill and clean the Pulsar job %s: %s", old_job, exc)
        await self._move(
            TesState.INITIALIZING,
            LogPatch(system_logs=[f"{why} as Pulsar job {new_job}"]),
            expected=DRIVEN_STATES,
            backend={"job_id": new_job, **counters, "submitting": False, "submitted": False},
        )
        self._fresh = False  # a crash may fall after this write: the next driver asks Pulsar first

    async def _script_never_ran(self, status: JobStatus) -> bool:
        """Pulsar's shell could not exec the job's command.sh ("Text file busy", engine/exec_race.py:
        the runner never started, no executor ran): submitted again as a fresh job, at most
        ``exec_race.MAX_RERUNS`` times; True when re-run. False: the usual outcome stands."""
        if not script_never_ran(status):
            return False
        done = int(self.record.backend.get("busy_reruns") or 0)
        if done >= MAX_BUSY_RERUNS:
            return False
        n = done + 1
        log.warning("Pulsar could not start job %s (Text file busy): submitting it again", self.job_id)
        await self._rerun(
            f"Pulsar could not start its job script ({_tail(status.stderr, 300)}, exit 126): the job "
            f"runner never started, no executor ran; submitted again ({n} of {MAX_BUSY_RERUNS})",
            {"busy_reruns": n},
        )
        return True

    async def _pulsar_final(self, status: JobStatus) -> None:
        n = len(self.record.task.executors)
        patch = LogPatch(end_time=now_rfc3339())
        if status.status == "cancelled":
            patch.system_logs.append("the Pulsar job was cancelled")
            await self._move(TesState.CANCELED, patch)
            return
        if status.status == "lost":
            await self._lost(str(status.raw.get(LOST_REASON_KEY) or LOST_DEFAULT_REASON))
            return
        if status.status == "failed":
            if await self._script_never_ran(status):
                return
            raise GiveUp(f"Pulsar reports the job failed: {_tail(status.stderr)}")
        # Small logs came with the final status (the script's stdout); else one download.
        # Pulsar reports the command's stdout as "job_stdout" or "stdout" depending on its job manager.
        packed: Path | bytes | None = next(
            (
                data
                for out in (status.stdout, status.tool_stdout)
                if (data := inline_meta(out, INLINE_META_BEGIN, INLINE_META_END)) is not None
            ),
            None,
        )
        job_id = self.job_id
        if packed is None:
            packed = self._scratch / META_TAR
            target = packed
            if not await self._pulsar(lambda: self.backend.fetch(job_id, META_TAR, target)):
                if await self._script_never_ran(status):
                    return
                if status.returncode == ALREADY_RAN_EXIT:
                    raise GiveUp("the job was submitted twice; the second run refused to start")
                raise GiveUp(
                    f"the job runner ended without its logs (returncode {status.returncode}): "
                    f"{_tail(status.stderr)}"
                )
        results = await asyncio.to_thread(read_results, packed, n)
        patch.executor_logs = results.executor_logs
        state = TesState.COMPLETE
        failed = [
            i
            for i, lg in results.executor_logs.items()
            if lg.exit_code != 0 and not self.record.task.executors[i].ignore_error
        ]
        runtime_failed = [i for i, note in results.system.items() if note.kind == "runtime"]
        for i, note in sorted(results.system.items()):
            prefix = "SYSTEM_ERROR: " if note.kind == "runtime" else ""
            stderr = results.executor_logs[i].stderr if i in results.executor_logs else None
            patch.system_logs.append(
                prefix
                + note.message
                + (f"; stderr: {_tail(stderr, 500)}" if note.kind == "runtime" and stderr else "")
            )
        if runtime_failed:
            state = TesState.SYSTEM_ERROR  # the runtime could not run the executor (e.g. docker exit 125)
        elif failed:
            state = TesState.EXECUTOR_ERROR
            patch.system_logs.append(
                f"executor {failed[0]} exited with code {results.executor_logs[failed[0]].exit_code}"
            )
        elif status.returncode not in (0, None, ALREADY_RAN_EXIT):  # 75: a duplicate submit refused to run
            state = TesState.SYSTEM_ERROR
            patch.system_logs.append(
                f"SYSTEM_ERROR: the job runner exited {status.returncode}: {_tail(status.stderr)}"
            )
        # Outputs are stored even after an executor failed (Nextflow reads its .exitcode output).
        if self.record.task.outputs:
            try:
                outputs, notes = await self.ctx.staging().store_outputs(
                    self.record.task, results.manifest, self._fetcher(), self._scratch / "outputs"
                )
                patch.outputs = outputs
                patch.system_logs += notes
            except StagingError as exc:
                patch.system_logs.append(f"SYSTEM_ERROR: {exc}")
                state = TesState.SYSTEM_ERROR
        if await self._move(state, patch) is None:
            await self._keep_results(state, patch)

    async def _keep_results(self, state: TesState, patch: LogPatch) -> None:
        """The final compare-and-set failed: the task was cancelled (or ended) while its results
        were gathered. The executor logs and outputs already written are kept anyway (a log patch
        without a state change): the outputs exist at their URLs, and the log says what ran."""
        if self.record.state not in FINAL_STATES:
            return  # not final: _drive goes on from the state the store holds
        patch.end_time = None  # the cancel set it
        patch.system_logs.append(
            f"the job ended ({state.value}) while the task became {self.record.state.value}; "
            "its executor logs and outputs are kept"
        )
        await self._update(log=patch)

    def _fetcher(self) -> Callable[[str, Path], Awaitable[bool]]:
        job_id = self.job_id

        async def fetch(name: str, dest: Path) -> bool:
            # Outputs come from the runner's snapshot (tes-out/: regular files only, made without
            # following links), never from fs/ where an executor may have left a link.
            snapshot = out_rel(name)
            return await self._pulsar(lambda: self.backend.fetch(job_id, snapshot, dest))

        return fetch

    async def _finish(self) -> None:
        """The task is final in the store: make sure its Pulsar job is dead and gone, then let go."""
        rec = self.record
        cleaned = False
        if rec.backend.get("server") and not rec.backend.get("cleaned"):
            try:
                cleaned = await self._release_pulsar_job(rec)
            except (GiveUp, BackendError) as exc:  # refused (e.g. 401) or unreachable: let go anyway
                await self._update(log=LogPatch(system_logs=[f"could not clean the Pulsar job: {exc}"]))
        # One store write for both (a crash before it only repeats the idempotent DELETE).
        await self._update(active=False, backend={"cleaned": True} if cleaned else None)
        self._finished = True
        log.info("%s, done", rec.state.value)

    async def _release_pulsar_job(self, rec: TaskRecord) -> bool:
        """Kill the job if it may still run, then delete its directory: True when deleted."""
        job_id = self.job_id
        # Cancelled, or lost work (a liveness verdict may be wrong): the job must not run on.
        if rec.state in (TesState.CANCELED, TesState.PREEMPTED) and rec.backend.get("submitting"):
            status = await self._pulsar(lambda: self.backend.status(job_id))
            if not status.is_final or status.status == "preprocessing":
                await self._pulsar(lambda: self.backend.cancel(job_id))
                await self._wait_pulsar_final()
                await self._update(log=LogPatch(system_logs=["the Pulsar job was killed (task cancelled)"]))
        if self.ctx.pulsar.keep_job_directories:
            return False
        await self._pulsar(lambda: self.backend.clean(job_id))
        return True

    async def _wait_pulsar_final(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        job_id = self.job_id
        while time.monotonic() < deadline:
            status = await self._pulsar(lambda: self.backend.status(job_id))
            if status.is_final:
                return
            await asyncio.sleep(0.1)


def remote_staging_outputs(task: TesTask) -> list[str]:
    """What a backend without file fetching (AMQP) must have Pulsar send back, relative to the job's
    working directory: the runner's logs and manifest, and each output (a wildcard: its base) from the
    runner's snapshot in tes-out/ (regular files only: Pulsar follows whatever links it finds)."""
    names = [META_TAR]
    for out in task.outputs or []:
        path = posixpath.normpath(out.path)
        names.append(out_rel(host_rel(wildcard_base(path) if has_wildcard(path) else path)))
    return list(dict.fromkeys(names))


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text[-limit:] if text else "(no output)"


__all__ = ["GiveUp", "LeaseLost", "TaskDriver", "TesExecutorLog"]
