"""What an executor sees and what comes back, on every real runtime here (bwrap, docker, podman).

Each test is one TES behaviour, run through the engine and a real Pulsar (REST) with
``runtime.type`` pinned to the runtime of the parameter; docker and podman run real containers of
``local/busybox:1`` (see conftest.py). bwrap has no image and no cgroup limits: the tests that need
them say so when they skip.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tesp_api.engine import Engine
from tesp_api.engine.runtimes.base import ram_bytes
from tesp_api.store.port import LogPatch, TaskRecord
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tesp_api.tes.states import CANCELABLE_STATES
from tests.engine.conftest import submit, wait_for
from tests.runtimes.conftest import RealRuntime, runtime_settings
from tests.services.http_server import HttpServer
from tests.services.pulsar import LocalPulsar

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]


def one(runtime: RealRuntime, command: str, **executor: object) -> dict[str, object]:
    """An executor of the runtime's image running ``sh -c command``."""
    return {"image": runtime.image, "command": ["sh", "-c", command], **executor}


def stdout_of(rec: TaskRecord, index: int = 0) -> str:
    return rec.log.logs[index].stdout or ""


def logs_of(rec: TaskRecord) -> str:
    """The system logs and the executors' stderr: what explains a failure in the assertion message."""
    lines = list(rec.log.system_logs or [])
    lines += [f"executor {i} stderr: {lg.stderr}" for i, lg in enumerate(rec.log.logs or []) if lg.stderr]
    return "\n".join(lines)


async def test_content_and_url_inputs_reach_the_executor(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime, web: HttpServer, tmp_path: Path
) -> None:
    name = f"in-{random.randint(10**8, 10**9)}.txt"
    (web.root / name).write_text("from the web\n")
    out = tmp_path / "results"
    tid = await submit(
        store,
        {
            "inputs": [
                {"path": "/in/content.txt", "content": "inline\n"},
                {"path": "/in/sub/web.txt", "url": f"{web.base_url}/{name}"},
            ],
            "outputs": [{"path": "/out/both.txt", "url": f"file://{out}/both.txt"}],
            "executors": [one(real_runtime, "cat /in/content.txt /in/sub/web.txt > /out/both.txt")],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert (out / "both.txt").read_text() == "inline\nfrom the web\n"


async def test_file_directory_and_wildcard_outputs_are_collected(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    tid = await submit(
        store,
        {
            "outputs": [
                {"path": "/out/f.txt", "url": f"file://{out}/f.txt"},
                {"path": "/out/dir", "url": f"file://{out}/dir", "type": "DIRECTORY"},
                {"path": "/out/w/*.txt", "url": f"file://{out}/w", "path_prefix": "/out/w/"},
            ],
            "executors": [
                one(
                    real_runtime,
                    "echo f > /out/f.txt && mkdir -p /out/dir/s /out/w && echo d > /out/dir/s/d"
                    " && echo a > /out/w/a.txt && echo b > /out/w/b.txt && echo no > /out/w/c.log",
                )
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert (out / "f.txt").read_text() == "f\n"
    assert (out / "dir/s/d").read_text() == "d\n"
    assert sorted(p.name for p in (out / "w").iterdir()) == ["a.txt", "b.txt"]
    assert sorted(o.path for o in rec.log.outputs) == [
        "/out/dir/s/d",
        "/out/f.txt",
        "/out/w/a.txt",
        "/out/w/b.txt",
    ]


async def test_a_volume_is_shared_between_executors(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(
        store,
        {
            "volumes": ["/shared"],
            "executors": [
                one(real_runtime, "echo from-first > /shared/x"),
                one(real_runtime, "cat /shared/x"),
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert rec.log.logs[1].stdout == "from-first\n"


@pytest.mark.parametrize("workdir", ["/data/work", "/"])
async def test_the_executor_starts_in_its_workdir(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime, workdir: str
) -> None:
    """``/`` is what Pulsar's TES client (Galaxy) sends on every executor."""
    tid = await submit(store, {"executors": [one(real_runtime, "pwd", workdir=workdir)]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert rec.log.logs[0].stdout == workdir + "\n"


async def test_env_values_reach_the_executor_verbatim(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(
        store,
        {
            "executors": [
                one(
                    real_runtime, 'printf "[%s][%s]" "$A" "$B"', env={"A": "x y", "B": "$HOME;'q' `id` a=b,c"}
                )
            ]
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert rec.log.logs[0].stdout == "[x y][$HOME;'q' `id` a=b,c]"


async def test_stdin_stdout_and_stderr_are_files_in_the_task(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    tid = await submit(
        store,
        {
            "inputs": [{"path": "/in/lines", "content": "b\na\n"}],
            "outputs": [
                {"path": "/out/sorted", "url": f"file://{out}/sorted"},
                {"path": "/out/err", "url": f"file://{out}/err"},
            ],
            "executors": [
                {
                    "image": real_runtime.image,
                    "command": ["sh", "-c", "sort; echo oops >&2"],
                    "stdin": "/in/lines",
                    "stdout": "/out/sorted",
                    "stderr": "/out/err",
                }
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert (out / "sorted").read_text() == "a\nb\n"
    assert (out / "err").read_text() == "oops\n"


async def test_ignore_error_lets_the_next_executor_run(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(
        store, {"executors": [one(real_runtime, "exit 3", ignore_error=True), one(real_runtime, "echo next")]}
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert [(lg.exit_code, lg.stdout) for lg in rec.log.logs] == [(3, ""), (0, "next\n")]


async def test_a_failing_executor_stops_the_task_with_executor_error(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(store, {"executors": [one(real_runtime, "exit 7"), one(real_runtime, "echo never")]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert [lg.exit_code for lg in rec.log.logs] == [7]


async def test_a_command_not_found_is_an_executor_error_with_exit_127(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(
        store, {"executors": [{"image": real_runtime.image, "command": ["no-such-command-here"]}]}
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR, logs_of(rec)
    assert [lg.exit_code for lg in rec.log.logs] == [127]


async def test_a_missing_image_is_a_system_error_with_a_clear_system_log(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    if not real_runtime.has_images:
        pytest.skip(f"{real_runtime.kind} has no images (the host userland runs)")
    image = "local/no-such-image:1"
    tid = await submit(store, {"executors": [{"image": image, "command": ["true"]}]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.SYSTEM_ERROR, (rec.state, logs_of(rec))
    assert image in logs_of(rec)


async def test_a_finished_container_is_removed(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    if not real_runtime.has_images:
        pytest.skip(f"{real_runtime.kind} makes no containers")
    tid = await submit(store, {"executors": [one(real_runtime, "true"), one(real_runtime, "exit 2")]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.EXECUTOR_ERROR
    assert [n for n in real_runtime.container_names() if tid in n] == []


async def test_cancel_removes_the_running_container_within_2_seconds(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    if not real_runtime.has_images:
        pytest.skip("bwrap makes no container (its cancel is tested on /proc in tests/engine/test_engine.py)")
    tid = await submit(store, {"executors": [one(real_runtime, "echo started; sleep 300")]})
    name = f"tes-{tid}-0"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while name not in await asyncio.to_thread(real_runtime.container_names):
        assert loop.time() < deadline, f"container {name} never started"
        await asyncio.sleep(0.1)
    rec = await store.update(
        tid,
        expected=CANCELABLE_STATES,
        state=TesState.CANCELED,
        log=LogPatch(system_logs=["canceled by the user"]),
    )  # what the API does
    assert rec is not None
    cancelled_at = time.monotonic()
    engine.notify_cancel(tid)
    while name in await asyncio.to_thread(real_runtime.container_names):
        await asyncio.sleep(0.05)
        assert time.monotonic() - cancelled_at < 10, f"container {name} still there 10 s after the cancel"
    took = time.monotonic() - cancelled_at
    assert took < 2.0, f"container {name} was removed {took:.1f} s after the cancel"
    rec = await wait_for(store, tid)
    assert rec.state == TesState.CANCELED


async def test_cpu_cores_and_ram_gb_are_cgroup_limits_of_the_container(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    if not real_runtime.has_cgroup_limits:
        pytest.skip(f"{real_runtime.kind} sets no cgroup limits")
    tid = await submit(
        store,
        {
            "resources": {"cpu_cores": 1, "ram_gb": 0.25},
            "executors": [
                one(
                    real_runtime,
                    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
                    " /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
                )
            ],
        },
    )
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    memory, quota, period = (int(v) for v in stdout_of(rec).split())
    assert memory == ram_bytes(0.25)
    assert quota / period == 1.0


async def test_the_executor_has_no_effective_capabilities(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(store, {"executors": [one(real_runtime, "grep CapEff /proc/self/status")]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert stdout_of(rec).split() == ["CapEff:", "0000000000000000"]


async def test_the_executor_has_no_network_but_loopback(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    tid = await submit(store, {"executors": [one(real_runtime, "tail -n +3 /proc/net/dev")]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    interfaces = sorted(line.split(":")[0].strip() for line in stdout_of(rec).splitlines() if ":" in line)
    assert interfaces == ["lo"]


def command_lines_with(needle: str) -> list[int]:
    """PIDs of the processes (host-wide: containers' included) whose argv contains ``needle``."""
    found = []
    for stat in Path("/proc").iterdir():
        if not stat.name.isdigit():
            continue
        try:
            if needle.encode() in (stat / "cmdline").read_bytes():
                found.append(int(stat.name))
        except OSError:
            continue
    return found


async def test_env_values_never_appear_on_a_command_line_while_the_executor_runs(
    engine: Engine, store: SqliteTaskStore, real_runtime: RealRuntime
) -> None:
    secret = f"s3cret-{random.randint(10**8, 10**9)}"
    marker = f"299.{random.randint(10**8, 10**9)}"
    tid = await submit(store, {"executors": [one(real_runtime, f"sleep {marker}", env={"TOKEN": secret})]})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not command_lines_with(f"sleep {marker}"):  # the executor's own process, seen from the host
        assert loop.time() < deadline, "the executor never started"
        await asyncio.sleep(0.1)
    assert command_lines_with(secret) == []
    await store.update(tid, expected=CANCELABLE_STATES, state=TesState.CANCELED)
    engine.notify_cancel(tid)
    assert (await wait_for(store, tid)).state == TesState.CANCELED


async def test_each_runtime_gets_only_its_own_extra_args(
    store: SqliteTaskStore, real_runtime: RealRuntime, pulsar: LocalPulsar, tmp_path: Path
) -> None:
    """``docker_args``/``podman_args``/``bwrap_args`` are set at once (as an operator whose auto may
    pick any of them would): the runtime in use applies its own and never sees the others'."""
    runtime = {
        **real_runtime.settings,
        "docker_args": ["--hostname", "docker-host"],
        "podman_args": ["--hostname", "podman-host"],
        "bwrap_args": ["--hostname", "bwrap-host"],
    }
    engine = Engine(runtime_settings(pulsar.url, tmp_path, runtime), store)
    await engine.start()
    try:
        tid = await submit(store, {"executors": [one(real_runtime, "hostname")]})
        rec = await wait_for(store, tid)
    finally:
        await engine.stop()
    assert rec.state == TesState.COMPLETE, logs_of(rec)
    assert stdout_of(rec) == f"{real_runtime.kind}-host\n"
