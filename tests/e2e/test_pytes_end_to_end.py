"""End to end with the py-tes 1.1.4 client: a real `tesp-api serve` process (API + engine inside,
embedded store) and a real Pulsar (REST), both on 127.0.0.1.

bubblewrap stands in for the container runtime because there is no Docker engine on these
machines: images are ignored and the host userland runs the commands, with the TES paths mapped.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tes  # type: ignore[import-untyped]

from tests.engine.serve_process import ServeProcess
from tests.engine.test_engine import processes_with
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar-e2e"), num_concurrent_jobs=8) as server:
        yield server


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def client(
    pulsar: LocalPulsar, results_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tes.HTTPClient]:
    server = ServeProcess(
        tmp_path_factory.mktemp("serve"), pulsar.url, TESP_API_TRANSFER__ALLOWED_DIRS=f'["{results_dir}"]'
    )
    server.start()
    try:
        yield tes.HTTPClient(server.url, timeout=10)
    finally:
        server.stop()


def run(client: tes.HTTPClient, task: tes.Task, timeout: float = 60) -> tes.Task:
    task_id = client.create_task(task)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.get_task(task_id, view="FULL")
        if got.state in FINAL:
            return got
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not final after {timeout}s")


def test_several_executors_with_streams_env_workdir_volumes_and_content_inputs(
    client: tes.HTTPClient, results_dir: Path
) -> None:
    task = tes.Task(
        name="full",
        inputs=[tes.Input(path="/data/in.txt", content="line one\nline two\n")],
        outputs=[tes.Output(path="/data/out/report.txt", url=f"file://{results_dir}/report.txt")],
        volumes=["/shared"],
        executors=[
            tes.Executor(
                image="alpine",
                command=["sh", "-c", 'echo "$GREETING" > /shared/greeting; pwd'],
                env={"GREETING": "hello 'quoted' $world"},
                workdir="/work",
            ),
            tes.Executor(
                image="alpine",
                command=["sort", "-r"],
                stdin="/data/in.txt",
                stdout="/data/out/sorted.txt",
                stderr="/data/out/err.txt",
            ),
            tes.Executor(
                image="alpine",
                command=[
                    "sh",
                    "-c",
                    "cat /shared/greeting /data/out/sorted.txt > /data/out/report.txt; echo warn >&2",
                ],
            ),
        ],
    )
    done = run(client, task)
    assert done.state == "COMPLETE", done.logs[0].system_logs
    logs = done.logs[0].logs
    assert [lg.exit_code for lg in logs] == [0, 0, 0]
    assert logs[0].stdout == "/work\n"
    assert logs[1].stdout == "line two\nline one\n"  # the tail of the redirected stdout file
    assert logs[2].stderr == "warn\n"
    assert (results_dir / "report.txt").read_text() == "hello 'quoted' $world\nline two\nline one\n"
    assert [(o.path, o.size_bytes) for o in done.logs[0].outputs] == [
        ("/data/out/report.txt", 40)
    ]  # py-tes parses the string


def test_arguments_reach_the_executor_unchanged(client: tes.HTTPClient) -> None:
    nasty = "echo $HOME; rm -rf /x'y"
    done = run(
        client,
        tes.Task(executors=[tes.Executor(image="alpine", command=["sh", "-c", 'printf "%s" "$0"', nasty])]),
    )
    assert done.state == "COMPLETE"
    assert done.logs[0].logs[0].stdout == nasty


@pytest.mark.parametrize(
    ("ignore_error", "n_logs", "state"), [(False, 1, "EXECUTOR_ERROR"), (True, 2, "COMPLETE")]
)
def test_ignore_error_decides_whether_the_next_executor_runs(
    client: tes.HTTPClient, ignore_error: bool, n_logs: int, state: str
) -> None:
    done = run(
        client,
        tes.Task(
            executors=[
                tes.Executor(image="alpine", command=["sh", "-c", "exit 1"], ignore_error=ignore_error),
                tes.Executor(image="alpine", command=["echo", "second"]),
            ]
        ),
    )
    assert len(done.logs[0].logs) == n_logs
    assert done.state == state


def test_a_failing_exit_code_is_an_executor_error(client: tes.HTTPClient) -> None:
    done = run(client, tes.Task(executors=[tes.Executor(image="alpine", command=["sh", "-c", "exit 42"])]))
    assert done.state == "EXECUTOR_ERROR"
    assert done.logs[0].logs[0].exit_code == 42


def test_cancel_of_a_sleep_kills_it(client: tes.HTTPClient, pulsar: LocalPulsar) -> None:
    marker = f"298.{random.randint(10**8, 10**9)}"
    task_id = client.create_task(
        tes.Task(executors=[tes.Executor(image="alpine", command=["sleep", marker])])
    )
    deadline = time.monotonic() + 30
    while not processes_with(marker):
        assert time.monotonic() < deadline, "the sleep never started"
        time.sleep(0.05)
    client.cancel_task(task_id)
    assert client.get_task(task_id).state == "CANCELED"  # at once, from the API
    while processes_with(marker) or (pulsar.staging_directory / task_id).exists():
        assert time.monotonic() < deadline + 30, "the sleep survived the cancel or the job was not cleaned"
        time.sleep(0.05)
    assert client.get_task(task_id).state == "CANCELED"
    assert os.path.exists(pulsar.staging_directory)
