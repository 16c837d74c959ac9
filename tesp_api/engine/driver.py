"""Drives ONE claimed task to its end: QUEUED -> INITIALIZING -> RUNNING -> final, then cleanup.

Every step is safe to repeat, because a crashed worker's task is claimed again and driven from
whatever state the store says:

* QUEUED: compare-and-set to INITIALIZING, choosing the Pulsar server (recorded in ``backend``).
* INITIALIZING: build the job spec (the fixed runner runs it), stage inputs, ``prepare`` (Pulsar setup + uploads: idempotent
  by job id), then compare-and-set to RUNNING *before* submitting. A cancel that lands first makes
  the CAS fail, so a cancelled task never starts.
* RUNNING: submit unless Pulsar already knows the job as started (``backend.submitted`` or a
  Pulsar status past "preprocessing"); the job runner itself refuses to run twice. Poll status
  every ``pulsar.status.poll_interval``; between polls re-read the store (a cancel by another
  process) or be woken by ``notify_cancel``.
* Pulsar final: read the executor logs, upload outputs, compare-and-set to the final state.
* Final in the store but still ``active``: kill the Pulsar job if it may run, clean its directory,
  then ``active=False`` (the task is done for good).

Pulsar unreachable: each call is retried with backoff; after ``pulsar.unreachable_deadline`` the
task becomes SYSTEM_ERROR with the reason.
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
from typing import TYPE_CHECKING, Any, TypeVar

from tesp_api import log_context
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
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobFile, JobSpec, JobStatus, PulsarBackend
from tesp_api.store.port import LogPatch, TaskRecord
from tesp_api.tes.models import TesExecutorLog, TesState, TesTask
from tesp_api.tes.states import FINAL_STATES, sources_of

if TYPE_CHECKING:
    from tesp_api.engine.engine import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF = 60.0
FIRST_POLL = 0.05  # seconds; x1.5 after each poll, up to pulsar.status.poll_interval
# While polling, the store is re-read (a cancel made by another process) at most this often; a
# cancel in this process wakes the driver at once (Engine.notify_cancel).
STORE_RECHECK = 2.0
STARTED_STATUSES = frozenset({"queued", "running", "postprocessing", "complete", "cancelled", "failed"})


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class GiveUp(Exception):
    """The task cannot go on: it ends in SYSTEM_ERROR with this (task-log safe) reason."""


class LeaseLost(Exception):
    """Another worker owns the task now: stop touching it."""


class TaskDriver:
    def __init__(self, engine: Engine, record: TaskRecord) -> None:
        self.engine = engine
        self.record = record
        self.task_id = record.id
        self.wake = asyncio.Event()
        self._unreachable_since: float | None = None
        self._fresh = False  # this driver moved the task out of QUEUED (no earlier attempt exists)
        self._scratch = Path(engine.settings.engine.work_dir) / self.task_id

    # ---- store helpers -------------------------------------------------------------------------
    async def _update(self, **kw: Any) -> TaskRecord | None:
        rec = await self.engine.store.update(self.task_id, lease_owner=self.engine.worker_id, **kw)
        if rec is not None:
            self.record = rec
        return rec

    async def _reread(self) -> TaskRecord:
        rec = await self.engine.store.get(self.task_id)
        if rec is None:
            raise LeaseLost("task deleted")
        if rec.lease_owner != self.engine.worker_id:
            raise LeaseLost(f"lease now held by {rec.lease_owner}")
        self.record = rec
        return rec

    async def _move(self, state: TesState, log_patch: LogPatch | None = None, **kw: Any) -> TaskRecord | None:
        """Compare-and-set to ``state``; None (and the record re-read) when the state moved meanwhile."""
        rec = await self._update(expected=sources_of(state), state=state, log=log_patch, **kw)
        if rec is None:
            await self._reread()
        return rec

    # ---- Pulsar helpers ------------------------------------------------------------------------
    @property
    def backend(self) -> PulsarBackend:
        return self.engine.backend_for(self.record)

    async def _pulsar(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Pulsar call, waiting out an unreachable Pulsar up to the deadline."""
        delay = self.engine.settings.pulsar.status.poll_interval
        while True:
            try:
                result = await call()
                self._unreachable_since = None
                return result
            except BackendUnavailable as exc:
                now = time.monotonic()
                if self._unreachable_since is None:
                    self._unreachable_since = now
                waited = now - self._unreachable_since
                deadline = self.engine.settings.pulsar.unreachable_deadline
                if waited >= deadline:
                    raise GiveUp(
                        f"Pulsar unreachable for {waited:.0f}s (deadline {deadline:.0f}s): {exc}"
                    ) from None
                log.warning("%s; retrying in %.1fs", exc, delay)
                await self._sleep(min(delay, deadline - waited))
                delay = min(delay * 2, MAX_BACKOFF)

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
            worker_id=self.engine.worker_id,
            pulsar_server=self.record.backend.get("server"),
        )
        try:
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
            shutil.rmtree(self._scratch, ignore_errors=True)
            log_context.reset(context)

    async def _drive(self) -> None:
        while True:
            state = self.record.state
            if state in FINAL_STATES:
                await self._finish()
                return
            try:
                if state == TesState.QUEUED:
                    await self._queued()
                elif state == TesState.INITIALIZING:
                    await self._initializing()
                elif state == TesState.RUNNING:
                    await self._running()
                else:  # PAUSED / CANCELING are never set by this service; treat as running
                    await self._running()
            except GiveUp as exc:
                await self._fail(str(exc))

    async def _fail(self, reason: str) -> None:
        log.warning("SYSTEM_ERROR: %s", reason)
        await self._move(
            TesState.SYSTEM_ERROR, LogPatch(end_time=now_rfc3339(), system_logs=[f"SYSTEM_ERROR: {reason}"])
        )

    async def _queued(self) -> None:
        server = self.engine.choose_server(self.record)
        await self._move(
            TesState.INITIALIZING,
            LogPatch(
                start_time=now_rfc3339(),
                system_logs=[f"worker {self.engine.worker_id}: Pulsar server {server}"],
            ),
            backend={"server": server, "job_id": self.task_id},
        )
        log_context.bind(pulsar_server=self.record.backend.get("server"))  # reset when run() ends
        self._fresh = self.record.state == TesState.INITIALIZING

    def _spec(self, files: list[JobFile]) -> JobSpec:
        python = self.engine.settings.runtime.runner_python
        return JobSpec(
            job_id=self.task_id,
            script_name=SCRIPT_NAME,
            files=files,
            outputs_for_remote_staging=remote_staging_outputs(self.record.task),
            interpreter=(python, "-I", "-S"),
            script_args=(SPEC_NAME,),
        )

    async def _initializing(self) -> None:
        task = self.record.task
        runtime = self.engine.runtime
        try:
            mapper = FileMapper(task, map_workdirs=runtime.needs_workdir_mount)
        except PathError as exc:
            raise GiveUp(str(exc)) from None
        # Asking Pulsar first matters only when an earlier attempt may have got this far: a task this
        # driver has just taken out of QUEUED cannot be known to Pulsar yet.
        if not self._fresh:
            status = await self._pulsar(lambda: self.backend.status(self.task_id))
        if not self._fresh and status.status in STARTED_STATUSES:
            # Pulsar runs (or ran) this job already: a crash after the submit. Never submit twice.
            await self._move(TesState.RUNNING, backend={"submitted": True})
            return
        files, placed = await self._stage_inputs()
        job = build_job_spec(
            task,
            self.task_id,
            runtime,
            mapper,
            placed,
            tail_bytes=self.engine.settings.engine.log_tail_bytes,
            settings=self.engine.settings.runtime,
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
        # RUNNING before the submit: a cancel that got in first wins, and the job never starts.
        if await self._move(TesState.RUNNING, backend={"submitting": True}) is None:
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
            scratch.mkdir(parents=True, exist_ok=True)
            try:
                local, is_archive = await self.engine.staging.fetch_input(i, inp, scratch)
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
        self.engine.count_submit()

    async def _running(self) -> None:
        poll = self.engine.settings.pulsar.status.poll_interval
        # Short jobs end soon: poll quickly at first, then back off to the configured interval; start
        # over when Pulsar starts running the job (it may have waited long in Pulsar's queue).
        delay = min(FIRST_POLL, poll)
        last = ""
        recheck_at = time.monotonic() + STORE_RECHECK
        while True:
            status = await self._pulsar(lambda: self.backend.status(self.task_id))
            self.engine.count_poll()
            if status.status == "preprocessing" and not self.record.backend.get("submitted"):
                await self._submit()  # the crash fell between RUNNING and the submit's record
                continue
            if status.is_final:
                await self._pulsar_final(status)
                return
            if status.status == "running" and last != "running":
                delay = min(FIRST_POLL, poll)
            last = status.status
            woken = await self._wait_next_poll(delay)
            delay = min(delay * 1.5, poll)
            if woken or time.monotonic() >= recheck_at:
                recheck_at = time.monotonic() + STORE_RECHECK
                rec = await self._reread()
                if rec.state != TesState.RUNNING:
                    return  # cancelled (or ended by someone else): _drive takes over

    async def _wait_next_poll(self, poll: float) -> bool:
        """A backend that pushes updates (AMQP: ``wait_for_change``) wakes the driver when Pulsar reports;
        the store is then only re-checked every ``pulsar.amqp_reconcile_after`` (a cancel in this
        process wakes the driver at once). Other backends are polled every ``poll`` seconds."""
        wait_for_change = getattr(self.backend, "wait_for_change", None)
        if wait_for_change is None:
            return await self._sleep(poll)
        recheck = max(poll, self.engine.settings.pulsar.amqp_reconcile_after)
        waiters = {
            asyncio.ensure_future(wait_for_change(self.task_id, recheck)),
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

    async def _pulsar_final(self, status: JobStatus) -> None:
        n = len(self.record.task.executors)
        patch = LogPatch(end_time=now_rfc3339())
        if status.status == "cancelled":
            patch.system_logs.append("the Pulsar job was cancelled")
            await self._move(TesState.CANCELED, patch)
            return
        if status.status == "lost":
            raise GiveUp(
                "Pulsar does not know the job any more (lost): most likely Pulsar was restarted while "
                "the job ran and cannot re-attach to it, or its job directory was removed; not re-run"
            )
        if status.status == "failed":
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
        if packed is None:
            packed = self._scratch / META_TAR
            if not await self._pulsar(lambda: self.backend.fetch(self.task_id, META_TAR, packed)):
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
                outputs, notes = await self.engine.staging.store_outputs(
                    self.record.task, results.manifest, self._fetcher(), self._scratch / "outputs"
                )
                patch.outputs = outputs
                patch.system_logs += notes
            except StagingError as exc:
                patch.system_logs.append(f"SYSTEM_ERROR: {exc}")
                state = TesState.SYSTEM_ERROR
        await self._move(state, patch)

    def _fetcher(self) -> Callable[[str, Path], Awaitable[bool]]:
        async def fetch(name: str, dest: Path) -> bool:
            # Outputs come from the runner's snapshot (tes-out/: regular files only, made without
            # following links), never from fs/ where an executor may have left a link.
            snapshot = out_rel(name)
            return await self._pulsar(lambda: self.backend.fetch(self.task_id, snapshot, dest))

        return fetch

    async def _finish(self) -> None:
        """The task is final in the store: make sure its Pulsar job is dead and gone, then let go."""
        rec = self.record
        cleaned = False
        if rec.backend.get("server") and not rec.backend.get("cleaned"):
            try:
                cleaned = await self._release_pulsar_job(rec)
            except GiveUp as exc:
                await self._update(log=LogPatch(system_logs=[f"could not clean the Pulsar job: {exc}"]))
        # One store write for both (a crash before it only repeats the idempotent DELETE).
        await self._update(active=False, backend={"cleaned": True} if cleaned else None)
        log.info("%s, done", rec.state.value)

    async def _release_pulsar_job(self, rec: TaskRecord) -> bool:
        """Kill the job if it may still run, then delete its directory: True when deleted."""
        if rec.state == TesState.CANCELED and rec.backend.get("submitting"):
            status = await self._pulsar(lambda: self.backend.status(self.task_id))
            if not status.is_final or status.status == "preprocessing":
                await self._pulsar(lambda: self.backend.cancel(self.task_id))
                await self._wait_pulsar_final()
                await self._update(log=LogPatch(system_logs=["the Pulsar job was killed (task cancelled)"]))
        if self.engine.settings.pulsar.keep_job_directories:
            return False
        await self._pulsar(lambda: self.backend.clean(self.task_id))
        return True

    async def _wait_pulsar_final(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = await self._pulsar(lambda: self.backend.status(self.task_id))
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
