"""Engine core correctness (issue 12): leases, one driver per task, states as the spec defines
them, lost work, a cancel racing completion, no file work on the event loop.

Real Pulsar (REST) and the embedded SQLite store, as in test_engine.py; bwrap stands in for a
container runtime (no Docker engine on these machines)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import random
import shutil
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import tesp_api.engine.engine as engine_module
from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.engine.context import DriverContext
from tesp_api.engine.driver import LeaseLost, TaskDriver
from tesp_api.local import free_port
from tesp_api.pulsar.port import JobStatus, Liveness
from tesp_api.pulsar.rest import RestBackend
from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.engine.slow_http import SlowInputServer
from tests.engine.test_engine import cancel, processes_with
from tests.services.pulsar import LocalPulsar

pytestmark = pytest.mark.pulsar
ENGINE_DIR = Path(engine_module.__file__).parent


def sleeper(marker: str) -> dict[str, Any]:
    return {"executors": [{"image": "a", "command": ["sleep", marker]}]}


def marker(seconds: int = 299) -> str:
    """A sleep argument no other process on the machine has: finds this executor in /proc."""
    return f"{seconds}.{random.randint(10**8, 10**9)}"


async def until_running(marker_text: str) -> None:
    for _ in range(600):
        if processes_with(marker_text):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the executor never started")


def driver_tasks(task_id: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"task-{task_id}" and not t.done()]


# ---- explicit collaborators ----------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, TYPE_CHECKING blocks and function bodies included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", ["driver.py", "context.py"])
def test_the_driver_side_never_imports_the_engine(module: str) -> None:
    assert "tesp_api.engine.engine" not in imported_modules(ENGINE_DIR / module)
    assert "tesp_api.engine" not in imported_modules(ENGINE_DIR / module)


def test_a_driver_is_given_a_context_not_the_engine(settings: Settings, store: SqliteTaskStore) -> None:
    engine = Engine(settings, store, worker_id="w")
    ctx = engine.driver_context()
    assert isinstance(ctx, DriverContext)
    assert all(getattr(ctx, name) is not engine for name in ctx.__dataclass_fields__)
    assert ctx.worker_id == "w" and ctx.store is store and ctx.engine is settings.engine


# ---- leases --------------------------------------------------------------------------------------


def unused_context(settings: Settings, store: SqliteTaskStore, worker_id: str) -> DriverContext:
    """A context for store-only checks: nothing here talks to Pulsar, stages or runs."""

    def never(*_: object) -> Any:
        raise AssertionError("not used by this test")

    class NoCounters:
        def count_poll(self) -> None: ...

        def count_submit(self) -> None: ...

    return DriverContext(
        engine=settings.engine,
        pulsar=settings.pulsar,
        runtime_settings=settings.runtime,
        store=store,
        worker_id=worker_id,
        backend_for=never,
        choose_server=never,
        staging=never,
        runtime=never,
        counters=NoCounters(),
    )


async def test_a_write_after_the_lease_was_taken_over_raises_lease_lost(
    settings: Settings, store: SqliteTaskStore
) -> None:
    tid = await submit(store, sleeper("1"))
    now = datetime.now(UTC)
    record = await store.claim("w1", now, now + timedelta(seconds=30))
    assert record is not None and record.id == tid
    driver = TaskDriver(unused_context(settings, store, "w1"), record)
    await store.release("w1", tid)
    assert await store.claim("w2", now, now + timedelta(seconds=30)) is not None
    with pytest.raises(LeaseLost):
        await driver._update(log=LogPatch(system_logs=["written by a worker that lost the lease"]))
    with pytest.raises(LeaseLost):  # a compare-and-set too: the lease, not the state, failed
        await driver._move(TesState.INITIALIZING)
    rec = await store.get(tid)
    assert rec is not None and rec.state == TesState.QUEUED and not rec.log.system_logs


async def test_a_worker_that_claims_its_own_task_again_keeps_one_driver(
    settings: Settings, store: SqliteTaskStore
) -> None:
    """The lease expired (a stalled loop or store) and this worker's claim took the task again."""
    engine = Engine(settings, store, worker_id="w")
    await engine.start()
    try:
        text = marker(3)
        tid = await submit(store, sleeper(text))
        await until_running(text)
        claims = engine.stats["claims"]
        past = datetime.now(UTC) - timedelta(seconds=1)
        assert await store.renew("w", [tid], past) == [tid]  # the lease has expired now
        while engine.stats["claims"] == claims:
            await asyncio.sleep(0.02)
        assert len(driver_tasks(tid)) == 1
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert engine.stats["submits"] == 1


class StubbornBackend:
    """The real REST backend, except that once ``stubborn`` is set a status call goes on for
    ``hold`` seconds after it is cancelled (a call stuck where cancellation cannot reach, e.g. a
    thread): the only way to have a driver outlive Engine.stop()'s timeout. Everything else is the
    real backend's."""

    def __init__(self, inner: RestBackend, hold: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.hold = hold
        self.stubborn = asyncio.Event()
        self.entered = asyncio.Event()
        self.held = asyncio.Event()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def status(self, job_id: str) -> JobStatus:
        if self.stubborn.is_set():
            self.entered.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.held.set()
                await asyncio.shield(asyncio.sleep(self.hold))
                raise
        return await self.inner.status(job_id)


async def test_stop_keeps_the_lease_of_a_driver_that_is_still_running(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "STOP_TIMEOUT", 0.2)
    backend = StubbornBackend(RestBackend("default", pulsar.url), hold=2.0)
    engine = Engine(settings, store, {"default": backend}, worker_id="w")  # type: ignore[dict-item]
    await engine.start()
    text = marker()
    tid = await submit(store, sleeper(text))
    await until_running(text)
    backend.stubborn.set()
    engine.notify_cancel(tid)  # wakes the driver: its next status call is the stubborn one
    await backend.entered.wait()
    still = driver_tasks(tid)
    await engine.stop()
    rec = await store.get(tid)
    assert backend.held.is_set() and any(not t.done() for t in still)
    assert rec is not None and rec.lease_owner == "w"  # not handed to another worker meanwhile
    await asyncio.gather(*still, return_exceptions=True)
    for pid in processes_with(text):  # the job itself: its Pulsar is shared with other tests
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- states as the spec defines them --------------------------------------------------------------


async def test_a_task_whose_job_pulsar_has_not_started_stays_initializing(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    """Left by a worker that recorded the submit, but Pulsar never took it (it says
    "preprocessing": set up, not started): the task is not RUNNING, whatever the store says of the
    submit. (queued_python reports "running" as soon as a job is in its queue: the state follows
    what Pulsar reports.)"""
    tid = await left_prepared(store, pulsar, backend={"submitting": True, "submitted": True})
    engine = Engine(settings, store)
    await engine.start()
    try:
        while engine.stats["polls"] < 5:
            await asyncio.sleep(0.05)
        status = (await pulsar_status(pulsar, tid)).status
        rec = await store.get(tid)
        await cancel(store, engine, tid)
        await wait_for(store, tid)
    finally:
        await engine.stop()
    assert status == "preprocessing"
    assert rec is not None and rec.state == TesState.INITIALIZING


async def left_prepared(store: SqliteTaskStore, pulsar: LocalPulsar, backend: dict[str, Any]) -> str:
    """A task whose Pulsar job a dead worker prepared (not submitted), INITIALIZING in the store."""
    from tests.engine.test_recovery import left_by_a_dead_worker

    tid = await left_by_a_dead_worker(store, pulsar, submitted=False, state=TesState.INITIALIZING)
    assert await store.update(tid, backend=backend) is not None
    return tid


async def pulsar_status(pulsar: LocalPulsar, job_id: str) -> JobStatus:
    client = RestBackend("default", pulsar.url)
    try:
        return await client.status(job_id)
    finally:
        await client.aclose()


async def test_a_cancel_before_the_submit_still_means_the_job_never_starts(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    """What was guaranteed by the CAS to RUNNING is kept by the CAS that records "submitting"."""
    with SlowInputServer() as slow:
        engine = Engine(settings, store)
        await engine.start()
        try:
            tid = await submit(
                store,
                {
                    "inputs": [{"path": "/in/x", "url": slow.url}],
                    "executors": [{"image": "a", "command": ["true"]}],
                },
            )
            await asyncio.to_thread(slow.requested.wait, 30)
            await cancel(store, engine, tid)
            slow.release.set()
            rec = await wait_for(store, tid)
        finally:
            await engine.stop()
    assert rec.state == TesState.CANCELED
    assert "submitting" not in rec.backend and engine.stats["submits"] == 0


# ---- lost work -----------------------------------------------------------------------------------


async def lose_the_job(pulsar: LocalPulsar, job_id: str, marker_text: str) -> None:
    """What a Pulsar host that lost the job leaves: its job directory gone, then its processes (its
    whole process group, the runner too). In this order: a job killed first would be reported
    "complete" without its logs by the Pulsar still watching it, which is not what is tested."""
    group = (await asyncio.to_thread(pulsar.job_process_groups)).get(job_id)
    await asyncio.to_thread(shutil.rmtree, pulsar.staging_directory / job_id, True)
    if group is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for pid in processes_with(marker_text):  # a sandbox in a session of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_job_pulsar_lost_after_it_started_ends_preempted_saying_why(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    engine = Engine(settings, store)
    await engine.start()
    try:
        text = marker()
        tid = await submit(store, sleeper(text))
        await until_running(text)
        await wait_for(store, tid, states={TesState.RUNNING}, inactive=False)
        await lose_the_job(pulsar, tid, text)
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.PREEMPTED, rec.log.system_logs
    assert any(
        line.startswith("PREEMPTED: lost work: Pulsar does not know the job") for line in rec.log.system_logs
    )


async def test_rerun_lost_runs_a_lost_job_again_as_a_fresh_pulsar_job(
    store: SqliteTaskStore, pulsar: LocalPulsar, tmp_path: Path
) -> None:
    engine = Engine(engine_settings(pulsar.url, tmp_path, rerun_lost=1), store)
    await engine.start()
    seconds = tmp_path / "seconds"  # read by each run: its inputs are staged afresh
    text = marker()
    seconds.write_text(text)
    try:
        tid = await submit(
            store,
            {
                "inputs": [{"path": "/in/seconds", "url": f"file://{seconds}"}],
                "executors": [{"image": "a", "command": ["sh", "-c", "sleep $(cat /in/seconds)"]}],
            },
        )
        await until_running(text)
        await wait_for(store, tid, states={TesState.RUNNING}, inactive=False)
        seconds.write_text("0")
        await lose_the_job(pulsar, tid, text)
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert rec.backend["job_id"] == f"{tid}-r1" and rec.backend["reruns"] == 1
    assert any("re-run 1 of 1 (engine.rerun_lost)" in line for line in rec.log.system_logs)
    assert engine.stats["submits"] == 2


async def test_a_job_lost_again_after_its_reruns_ends_preempted(
    store: SqliteTaskStore, pulsar: LocalPulsar, tmp_path: Path
) -> None:
    engine = Engine(engine_settings(pulsar.url, tmp_path, rerun_lost=1), store)
    await engine.start()
    try:
        text = marker()
        tid = await submit(store, sleeper(text))
        for job_id in (tid, f"{tid}-r1"):
            await until_running(text)
            while (
                (rec := await store.get(tid)) is None
                or rec.state != TesState.RUNNING
                or rec.backend.get("job_id") != job_id
            ):
                await asyncio.sleep(0.05)
            await lose_the_job(pulsar, job_id, text)
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.PREEMPTED, rec.log.system_logs
    assert any("re-run 1 time(s) already" in line for line in rec.log.system_logs)


# ---- a cancel racing completion ------------------------------------------------------------------


async def test_a_cancel_while_outputs_upload_keeps_the_executor_logs_and_outputs(
    settings: Settings, store: SqliteTaskStore
) -> None:
    with SlowInputServer() as slow:
        engine = Engine(settings, store)
        await engine.start()
        try:
            tid = await submit(
                store,
                {
                    "outputs": [{"path": "/out/r.txt", "url": slow.url.replace("input.txt", "r.txt")}],
                    "executors": [{"image": "a", "command": ["sh", "-c", "echo done; echo r > /out/r.txt"]}],
                },
            )
            await asyncio.to_thread(slow.put_requested.wait, 60)
            await cancel(store, engine, tid)
            slow.put_release.set()
            rec = await wait_for(store, tid)
        finally:
            await engine.stop()
    assert rec.state == TesState.CANCELED
    assert [lg.stdout for lg in rec.log.logs] == ["done\n"]
    assert [o.path for o in rec.log.outputs] == ["/out/r.txt"]
    assert slow.put_bodies == [b"r\n"]
    assert any("its executor logs and outputs are kept" in line for line in rec.log.system_logs)


# ---- no file work on the event loop --------------------------------------------------------------


async def test_the_scratch_directory_is_removed_off_the_event_loop(
    settings: Settings, store: SqliteTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    scratch_root = Path(settings.engine.work_dir)
    calls: list[bool] = []
    real = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == scratch_root:  # the drivers' scratch directories only
            calls.append(threading.get_ident() == loop_thread)
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    engine = Engine(settings, store)
    await engine.start()
    try:
        tid = await submit(store, {"inputs": [{"path": "/in/x", "content": "x"}], **sleeper("0")})
        rec = await wait_for(store, tid)
        while not calls:
            await asyncio.sleep(0.02)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert calls and not any(calls), "shutil.rmtree ran on the event loop"


# ---- an unreachable Pulsar says so while the task waits -------------------------------------------


async def test_a_task_waiting_for_an_unreachable_pulsar_says_why_once_while_it_waits(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    settings = engine_settings(f"http://127.0.0.1:{free_port()}", tmp_path)  # nothing listens there
    engine = Engine(settings, store)
    await engine.start()
    try:
        tid = await submit(store, {"executors": [{"image": "a", "command": ["true"]}]})
        while True:
            seen = await store.get(tid)
            assert seen is not None
            if any("is unreachable" in line for line in seen.log.system_logs or []):
                break
            await asyncio.sleep(0.02)
        waiting = seen.state
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert waiting == TesState.INITIALIZING
    said = [line for line in rec.log.system_logs or [] if "is unreachable" in line]
    assert len(said) == 1 and "waiting for it, for at most 3s (pulsar.unreachable_deadline)" in said[0]
    assert rec.state == TesState.SYSTEM_ERROR


class WithLiveness:
    """The real REST backend plus the optional liveness probe (port.LivenessProbe), whose verdict
    the test sets: the contract the driver keeps with a backend that can tell (pulsar/liveness.py
    is the real one, tested with its own Pulsar restarts)."""

    def __init__(self, inner: RestBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.dead = False
        self.asked = 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def liveness(self, job_id: str) -> Liveness:
        self.asked += 1
        return Liveness(alive=not self.dead, reason="the runner's heartbeat stopped" if self.dead else "")


async def test_a_job_the_liveness_probe_calls_dead_ends_preempted_and_is_killed(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    backend = WithLiveness(RestBackend("default", pulsar.url))
    engine = Engine(settings, store, {"default": backend})  # type: ignore[dict-item]
    await engine.start()
    try:
        text = marker()
        tid = await submit(store, sleeper(text))
        await until_running(text)
        while backend.asked == 0:
            await asyncio.sleep(0.05)
        backend.dead = True
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.PREEMPTED, rec.log.system_logs
    assert "PREEMPTED: lost work: the runner's heartbeat stopped" in (rec.log.system_logs or [])
    assert processes_with(text) == []  # a wrong verdict leaves nothing running
