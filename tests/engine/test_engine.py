"""The engine against a real Pulsar (REST) and the embedded store: what a task goes through.

Executors run under bubblewrap, standing in for a container runtime: there is no Docker engine on
these machines (the image is ignored, the host userland runs the command)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.local import free_port
from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tesp_api.tes.states import CANCELABLE_STATES
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.engine.slow_http import SlowInputServer
from tests.services.pulsar import LocalPulsar

pytestmark = pytest.mark.pulsar


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


async def cancel(store: SqliteTaskStore, engine: Engine, task_id: str) -> None:
    """What the API does on POST /tasks/{id}:cancel."""
    rec = await store.update(
        task_id,
        expected=CANCELABLE_STATES,
        state=TesState.CANCELED,
        log=LogPatch(system_logs=["canceled by the user"]),
    )
    assert rec is not None
    engine.notify_cancel(task_id)


async def test_a_task_runs_to_complete_with_its_logs(engine: Engine, store: SqliteTaskStore) -> None:
    tid = await submit(
        store,
        {
            "executors": [
                {"image": "alpine", "command": ["sh", "-c", "echo out; echo err >&2"]},
                {"image": "alpine", "command": ["echo", "second"]},
            ]
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE
    assert [(lg.exit_code, lg.stdout, lg.stderr) for lg in rec.log.logs] == [
        (0, "out\n", "err\n"),
        (0, "second\n", ""),
    ]
    assert rec.log.start_time and rec.log.end_time
    assert all(lg.start_time and lg.end_time for lg in rec.log.logs)
    assert rec.backend["server"] == "default"


async def test_a_failing_executor_ends_in_executor_error(engine: Engine, store: SqliteTaskStore) -> None:
    tid = await submit(
        store,
        {
            "executors": [
                {"image": "a", "command": ["sh", "-c", "exit 7"]},
                {"image": "a", "command": ["echo", "never"]},
            ]
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert [lg.exit_code for lg in rec.log.logs] == [7]


async def test_content_inputs_reach_the_executor_and_outputs_are_stored(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    out_dir = tmp_path / "results"
    tid = await submit(
        store,
        {
            "inputs": [{"path": "/in/data.txt", "content": "payload\n"}],
            "outputs": [
                {"path": "/out/copy.txt", "url": f"file://{out_dir}/copy.txt"},
                {"path": "/out/dir", "url": f"file://{out_dir}/dir", "type": "DIRECTORY"},
            ],
            "executors": [
                {
                    "image": "a",
                    "command": [
                        "sh",
                        "-c",
                        "cp /in/data.txt /out/copy.txt && mkdir -p /out/dir/s && echo x > /out/dir/s/f",
                    ],
                }
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert (out_dir / "copy.txt").read_text() == "payload\n"
    assert (out_dir / "dir/s/f").read_text() == "x\n"
    assert sorted((o.path, o.size_bytes) for o in rec.log.outputs) == [
        ("/out/copy.txt", "8"),
        ("/out/dir/s/f", "2"),
    ]


async def test_cancel_of_a_running_task_kills_the_process(
    engine: Engine, store: SqliteTaskStore, pulsar: LocalPulsar
) -> None:
    marker = f"299.{random.randint(10**8, 10**9)}"
    tid = await submit(store, {"executors": [{"image": "a", "command": ["sleep", marker]}]})
    await wait_for(store, tid, states={TesState.RUNNING}, inactive=False)
    for _ in range(200):
        if processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker), "the executor never started"
    await cancel(store, engine, tid)
    rec = await wait_for(store, tid)
    assert rec.state == TesState.CANCELED
    assert processes_with(marker) == []
    assert not (pulsar.staging_directory / tid).exists()  # the Pulsar job was cleaned


@pytest.fixture
def slow_http() -> Iterator[SlowInputServer]:
    with SlowInputServer() as server:
        yield server


async def test_a_task_cancelled_while_initializing_never_starts(
    engine: Engine, store: SqliteTaskStore, slow_http: SlowInputServer
) -> None:
    tid = await submit(
        store,
        {
            "inputs": [{"path": "/in/x", "url": slow_http.url}],
            "executors": [{"image": "a", "command": ["echo", "ran"]}],
        },
    )
    await asyncio.to_thread(slow_http.requested.wait, 30)
    assert (await store.get(tid)).state == TesState.INITIALIZING  # type: ignore[union-attr]
    await cancel(store, engine, tid)
    slow_http.release.set()
    rec = await wait_for(store, tid)
    assert rec.state == TesState.CANCELED
    assert rec.log.logs == [] and engine.stats["submits"] == 0


async def test_two_engines_on_one_store_never_run_a_task_twice(
    settings: Settings, store: SqliteTaskStore
) -> None:
    engines = [Engine(settings, store, worker_id=f"w{i}") for i in range(2)]
    for e in engines:
        await e.start()
    try:
        ids = [await submit(store, {"executors": [{"image": "a", "command": ["true"]}]}) for _ in range(6)]
        for tid in ids:
            assert (await wait_for(store, tid)).state == TesState.COMPLETE
    finally:
        for e in engines:
            await e.stop()
    assert sum(e.stats["submits"] for e in engines) == 6


async def test_an_unreachable_pulsar_ends_in_system_error_after_the_deadline(
    store: SqliteTaskStore, tmp_path: Path
) -> None:
    settings = engine_settings(f"http://127.0.0.1:{free_port()}", tmp_path)
    engine = Engine(settings, store)
    await engine.start()
    try:
        tid = await submit(store, {"executors": [{"image": "a", "command": ["true"]}]})
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.SYSTEM_ERROR
    assert any("unreachable" in line for line in rec.log.system_logs or [])


async def test_backend_parameter_picks_the_pulsar_server(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path
) -> None:
    settings = engine_settings(pulsar.url, tmp_path)
    settings.pulsar.servers = [
        type(settings.pulsar.effective_servers()[0])(name=n, url=pulsar.url) for n in ("first", "second")
    ]
    engine = Engine(settings, store)
    await engine.start()
    try:
        tid = await submit(
            store,
            {
                "resources": {"backend_parameters": {"PULSAR_SERVER": "second"}},
                "executors": [{"image": "a", "command": ["true"]}],
            },
        )
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE and rec.backend["server"] == "second"


async def test_job_directories_are_kept_when_asked(
    pulsar: LocalPulsar, store: SqliteTaskStore, tmp_path: Path
) -> None:
    settings = engine_settings(pulsar.url, tmp_path)
    settings.pulsar.keep_job_directories = True
    engine = Engine(settings, store)
    await engine.start()
    try:
        tid = await submit(store, {"executors": [{"image": "a", "command": ["true"]}]})
        await wait_for(store, tid)
    finally:
        await engine.stop()
    assert (pulsar.staging_directory / tid).is_dir()


async def test_wildcard_outputs_go_below_the_url_without_the_prefix(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    out = tmp_path / "globbed"
    tid = await submit(
        store,
        {
            "outputs": [{"path": "/out/*.txt", "url": f"file://{out}", "path_prefix": "/out/"}],
            "executors": [
                {
                    "image": "a",
                    "command": [
                        "sh",
                        "-c",
                        "mkdir -p /out && echo a > /out/a.txt && echo b > /out/b.txt && echo no > /out/c.log",
                    ],
                }
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert sorted(o.path for o in rec.log.outputs) == ["/out/a.txt", "/out/b.txt"]


async def test_an_unsafe_path_ends_in_system_error_before_anything_runs(
    engine: Engine, store: SqliteTaskStore
) -> None:
    tid = await submit(
        store, {"volumes": ["/data/../etc"], "executors": [{"image": "a", "command": ["true"]}]}
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.SYSTEM_ERROR
    assert any("'..'" in line for line in rec.log.system_logs or [])
    assert engine.stats["submits"] == 0


async def test_url_inputs_files_and_directories_are_placed_at_their_paths(
    engine: Engine, store: SqliteTaskStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("one\n")
    (src / "dir" / "a.txt").write_text("a\n")
    (src / "dir" / "sub" / "b.txt").write_text("b\n")
    tid = await submit(
        store,
        {
            "inputs": [
                {"path": "/in/one.txt", "url": f"file://{src}/one.txt"},
                {"path": "/in/tree", "url": f"file://{src}/dir", "type": "DIRECTORY"},
            ],
            "executors": [
                {"image": "a", "command": ["sh", "-c", "cat /in/one.txt /in/tree/a.txt /in/tree/sub/b.txt"]}
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, rec.log.system_logs
    assert rec.log.logs[0].stdout == "one\na\nb\n"
