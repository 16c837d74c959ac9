"""Crash windows, reproduced exactly: a task left by a dead worker between two steps is driven on by
a new engine without running anything twice (real Pulsar; bwrap stands in for a container runtime,
there is no Docker engine here)."""

from __future__ import annotations

import asyncio

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.engine.file_mapper import FileMapper
from tesp_api.engine.job_script import SCRIPT_NAME, SPEC_NAME, build_job_spec, spec_bytes
from tesp_api.engine.runner import runner_source
from tesp_api.engine.runtimes.bwrap import BwrapRuntime
from tesp_api.pulsar.port import JobFile, JobSpec
from tesp_api.pulsar.rest import RestBackend
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.services.pulsar import LocalPulsar

pytestmark = pytest.mark.pulsar
TASK = {"executors": [{"image": "a", "command": ["echo", "once"]}]}


async def left_by_a_dead_worker(
    store: SqliteTaskStore, pulsar: LocalPulsar, *, submitted: bool, state: TesState, submitting: bool = False
) -> str:
    """Create the task and do by hand what a worker did before it died: prepare the Pulsar job
    (and submit it when ``submitted``), leaving the store in ``state``."""
    task_id = await submit(store, TASK)
    rec = await store.get(task_id)
    assert rec is not None
    job = build_job_spec(
        rec.task, task_id, BwrapRuntime(), FileMapper(rec.task, map_workdirs=True), [], tail_bytes=1000
    )
    spec = JobSpec(
        task_id,
        SCRIPT_NAME,
        [
            JobFile(SCRIPT_NAME, "tool", data=runner_source()),
            JobFile(SPEC_NAME, "tool", data=spec_bytes(job)),
        ],
        interpreter=("python3", "-I", "-S"),
        script_args=(SPEC_NAME,),
    )
    client = RestBackend("default", pulsar.url)
    try:
        await client.prepare(spec)
        if submitted:
            await client.submit(spec)
            while not (await client.status(task_id)).is_final:
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    await store.update(
        task_id,
        expected=frozenset({TesState.QUEUED}),
        state=TesState.INITIALIZING,
        backend={"server": "default", "job_id": task_id},
    )
    if submitting:  # the CAS that records "submitting" before the submit (the state stays INITIALIZING)
        await store.update(task_id, expected=frozenset({TesState.INITIALIZING}), backend={"submitting": True})
    if state == TesState.RUNNING:  # a record written before INITIALIZING lasted until Pulsar runs the job
        await store.update(
            task_id,
            expected=frozenset({TesState.INITIALIZING}),
            state=TesState.RUNNING,
            backend={"submitting": True},
        )
    return task_id


async def test_a_job_pulsar_already_ran_is_not_submitted_again(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    """Died after the submit, before recording RUNNING."""
    task_id = await left_by_a_dead_worker(store, pulsar, submitted=True, state=TesState.INITIALIZING)
    engine = Engine(settings, store)
    await engine.start()
    try:
        rec = await wait_for(store, task_id)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE
    assert [lg.stdout for lg in rec.log.logs] == ["once\n"]
    assert engine.stats["submits"] == 0


async def test_a_prepared_job_never_submitted_is_submitted_once(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    """Died between the CAS to RUNNING and the submit (a record of the earlier design)."""
    task_id = await left_by_a_dead_worker(store, pulsar, submitted=False, state=TesState.RUNNING)
    engine = Engine(settings, store)
    await engine.start()
    try:
        rec = await wait_for(store, task_id)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE
    assert [lg.stdout for lg in rec.log.logs] == ["once\n"]
    assert engine.stats["submits"] == 1


async def test_a_job_recorded_submitting_but_never_submitted_is_submitted_once(
    settings: Settings, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    """Died between recording "submitting" (still INITIALIZING) and the submit."""
    task_id = await left_by_a_dead_worker(
        store, pulsar, submitted=False, state=TesState.INITIALIZING, submitting=True
    )
    engine = Engine(settings, store)
    await engine.start()
    try:
        rec = await wait_for(store, task_id)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE
    assert [lg.stdout for lg in rec.log.logs] == ["once\n"]
    assert engine.stats["submits"] == 1
