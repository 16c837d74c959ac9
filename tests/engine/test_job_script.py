"""The job runner, run for real (``python -I -S tes_runner.py tes-job.json``) with bubblewrap in a
directory laid out like a Pulsar job (tool_files/, inputs/, working/) but without Pulsar: what it
records and what reaches executors. bwrap stands in for a container runtime here; the docker/podman
suite with real engines is tests/runtimes/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.file_mapper import FileMapper
from tesp_api.engine.job_script import (
    ALREADY_RAN_EXIT,
    META_TAR,
    SCRIPT_NAME,
    SPEC_NAME,
    PlacedInput,
    build_job_spec,
    spec_bytes,
)
from tesp_api.engine.results import JobResults, read_results
from tesp_api.engine.runner import runner_source
from tesp_api.engine.runtimes.base import Runtime
from tesp_api.engine.runtimes.bwrap import BwrapRuntime
from tesp_api.tes.models import TesTask

NASTY = 'echo $HOME; rm -rf /x\'y "z" `id` \\ $(true)\n*'


def write_job(
    tmp: Path,
    spec: dict[str, Any],
    inputs: dict[str, bytes] | None = None,
    placed: list[PlacedInput] | None = None,
    runtime: Runtime | None = None,
    settings: RuntimeSettings | None = None,
    tail_bytes: int = 1000,
) -> tuple[Path, TesTask]:
    task = TesTask.model_validate(spec)
    job = tmp / "job"
    for d in ("tool_files", "inputs", "working"):
        (job / d).mkdir(parents=True, exist_ok=True)
    for name, data in (inputs or {}).items():
        (job / "inputs" / name).write_bytes(data)
    runtime = runtime or BwrapRuntime()
    mapper = FileMapper(task, map_workdirs=runtime.needs_workdir_mount)
    job_spec = build_job_spec(
        task, "t1", runtime, mapper, placed or [], tail_bytes=tail_bytes, settings=settings
    )
    (job / "tool_files" / SCRIPT_NAME).write_bytes(runner_source())
    (job / "tool_files" / SPEC_NAME).write_bytes(spec_bytes(job_spec))
    return job, task


def runner_argv(job: Path, python: str = sys.executable) -> list[str]:
    return [python, "-I", "-S", str(job / "tool_files" / SCRIPT_NAME), str(job / "tool_files" / SPEC_NAME)]


def oldest_python() -> str | None:
    """A Python 3.8 on this machine (PATH or pyenv), for the runner's promise to run on the Pulsar host's."""
    import glob
    import shutil

    candidates = [
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))),
        shutil.which("python3.8"),
    ]
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return python  # a pyenv shim without that version installed does not count
    return None


def run_job(
    tmp: Path,
    spec: dict[str, Any],
    inputs: dict[str, bytes] | None = None,
    placed: list[PlacedInput] | None = None,
    **kw: Any,
) -> tuple[subprocess.CompletedProcess[str], Path, TesTask]:
    job, task = write_job(tmp, spec, inputs, placed, **kw)
    proc = subprocess.run(
        runner_argv(job),
        cwd=job / "working",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )
    return proc, job, task


def results(job: Path, n: int) -> JobResults:
    return read_results(job / "working" / META_TAR, n)


def test_every_argument_reaches_the_executor_unchanged(tmp_path: Path) -> None:
    proc, job, _task = run_job(
        tmp_path, {"executors": [{"image": "alpine", "command": ["printf", "%s|", NASTY, "", "two words"]}]}
    )
    assert proc.returncode == 0, proc.stderr
    assert results(job, 1).executor_logs[0].stdout == f"{NASTY}||two words|"


def test_the_runner_runs_on_python_3_8(tmp_path: Path) -> None:
    import pytest

    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.8 on this machine")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("in\n")
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=".")
    job, _task = write_job(
        tmp_path,
        {
            "inputs": [{"path": "/in", "url": "file:///x", "type": "DIRECTORY"}],
            "outputs": [{"path": "/out/*", "url": "file:///y"}],
            "executors": [
                {
                    "image": "a",
                    "command": ["sh", "-c", 'cat /in/d/f > /out/r; echo "$V"'],
                    "env": {"V": "v 1"},
                }
            ],
        },
        inputs={"tes-in-0.tar": archive.read_bytes()},
        placed=[PlacedInput("tes-in-0.tar", "/in", True)],
    )
    proc = subprocess.run(
        runner_argv(job, python),
        cwd=job / "working",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr
    res = results(job, 1)
    assert res.executor_logs[0].stdout == "v 1\n" and [e.container_path for e in res.manifest] == ["/out/r"]


def test_sh_c_sees_its_script_literally(tmp_path: Path) -> None:
    cmd = "echo \"$HOME\"; echo 'rm -rf /x'\"'\"'y'"
    _proc, job, _ = run_job(tmp_path, {"executors": [{"image": "alpine", "command": ["sh", "-c", cmd]}]})
    assert results(job, 1).executor_logs[0].stdout == "/tmp\nrm -rf /x'y\n"


def test_env_workdir_and_stdin_stdout_stderr(tmp_path: Path) -> None:
    _proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {
                    "image": "alpine",
                    "command": ["sh", "-c", 'pwd; echo "$V"; cat; echo e >&2'],
                    "workdir": "/work/dir",
                    "env": {"V": "a 'b' $c"},
                    "stdin": "/data/in.txt",
                    "stdout": "/data/out/stdout.txt",
                    "stderr": "/data/out/stderr.txt",
                }
            ],
            "inputs": [{"path": "/data/in.txt", "content": "from stdin\n"}],
        },
        inputs={"tes-in-0": b"from stdin\n"},
        placed=[PlacedInput("tes-in-0", "/data/in.txt")],
    )
    fs = job / "working" / "fs"
    assert (fs / "data/out/stdout.txt").read_text() == "/work/dir\na 'b' $c\nfrom stdin\n"
    assert (fs / "data/out/stderr.txt").read_text() == "e\n"
    logs = results(job, 1).executor_logs
    assert logs[0].stdout == "/work/dir\na 'b' $c\nfrom stdin\n" and logs[0].stderr == "e\n"


def test_workdir_slash_is_just_a_chdir(tmp_path: Path) -> None:
    """Pulsar's TES client (Galaxy) sets workdir "/" on every executor."""
    _proc, job, _ = run_job(
        tmp_path, {"executors": [{"image": "alpine", "command": ["pwd"], "workdir": "/"}]}
    )
    assert results(job, 1).executor_logs[0].stdout == "/\n"


def test_a_failing_executor_stops_the_sequence(tmp_path: Path) -> None:
    proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {"image": "a", "command": ["sh", "-c", "exit 3"]},
                {"image": "a", "command": ["echo", "never"]},
            ]
        },
    )
    logs = results(job, 2).executor_logs
    assert proc.returncode == 3
    assert list(logs) == [0] and logs[0].exit_code == 3


def test_ignore_error_lets_the_next_executor_run(tmp_path: Path) -> None:
    proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {"image": "a", "command": ["sh", "-c", "exit 3"], "ignore_error": True},
                {"image": "a", "command": ["echo", "next"]},
            ]
        },
    )
    logs = results(job, 2).executor_logs
    assert proc.returncode == 0
    assert [logs[0].exit_code, logs[1].exit_code, logs[1].stdout] == [3, 0, "next\n"]


def test_a_command_not_found_exits_127(tmp_path: Path) -> None:
    proc, job, _ = run_job(tmp_path, {"executors": [{"image": "a", "command": ["no-such-command-here"]}]})
    assert proc.returncode == 127 and results(job, 1).executor_logs[0].exit_code == 127


def test_volumes_are_shared_between_executors(tmp_path: Path) -> None:
    _proc, job, _ = run_job(
        tmp_path,
        {
            "volumes": ["/shared"],
            "executors": [
                {"image": "a", "command": ["sh", "-c", "echo hi > /shared/f"]},
                {"image": "a", "command": ["cat", "/shared/f"]},
            ],
        },
    )
    assert results(job, 2).executor_logs[1].stdout == "hi\n"


def test_directory_inputs_are_unpacked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("deep\n")
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=".")
    _proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [{"image": "a", "command": ["cat", "/in/dir/sub/f"]}],
            "inputs": [{"path": "/in/dir", "url": "file:///x", "type": "DIRECTORY"}],
        },
        inputs={"tes-in-0.tar": archive.read_bytes()},
        placed=[PlacedInput("tes-in-0.tar", "/in/dir", True)],
    )
    assert results(job, 1).executor_logs[0].stdout == "deep\n"


def test_manifest_lists_files_directories_and_wildcard_bases(tmp_path: Path) -> None:
    _proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {
                    "image": "a",
                    "command": [
                        "sh",
                        "-c",
                        "mkdir -p /o/d/sub && echo 1 > /o/f.txt && echo 22 > /o/d/sub/g && ln -s /etc/passwd /o/link",
                    ],
                }
            ],
            "outputs": [
                {"path": "/o/f.txt", "url": "u"},
                {"path": "/o/d", "url": "u", "type": "DIRECTORY"},
                {"path": "/o/*.txt", "url": "u"},
                {"path": "/o/link", "url": "u"},
                {"path": "/o/missing", "url": "u"},
            ],
        },
    )
    manifest = results(job, 1).manifest
    got = sorted((e.output_index, e.size, e.container_path) for e in manifest)
    assert got == [(0, 2, "/o/f.txt"), (1, 3, "/o/d/sub/g"), (2, 2, "/o/f.txt"), (2, 3, "/o/d/sub/g")]


def test_outputs_are_snapshot_as_regular_files_in_tes_out(tmp_path: Path) -> None:
    _proc, job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {
                    "image": "a",
                    "command": ["sh", "-c", "mkdir -p /o/d && echo x > /o/d/f && ln -s /etc /o/d/l"],
                }
            ],
            "outputs": [{"path": "/o/d", "url": "u", "type": "DIRECTORY"}],
        },
    )
    out = job / "working" / "tes-out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["o", "o/d", "o/d/f"]
    assert (out / "o/d/f").read_text() == "x\n" and not (out / "o/d/f").is_symlink()


def test_the_runner_never_runs_twice(tmp_path: Path) -> None:
    spec = {"executors": [{"image": "a", "command": ["sh", "-c", "echo run >> /v/count"]}], "volumes": ["/v"]}
    first, job, _ = run_job(tmp_path, spec)
    second = subprocess.run(
        runner_argv(job), cwd=job / "working", capture_output=True, text=True, check=False
    )
    assert (first.returncode, second.returncode) == (0, ALREADY_RAN_EXIT)
    assert (job / "working/fs/v/count").read_text() == "run\n"


def test_log_tails_are_cut(tmp_path: Path) -> None:
    _proc, job, _ = run_job(tmp_path, {"executors": [{"image": "a", "command": ["sh", "-c", "seq 1 5000"]}]})
    out = results(job, 1).executor_logs[0].stdout
    assert out is not None and len(out) == 1000 and out.endswith("4999\n5000\n")
    with tarfile.open(job / "working" / META_TAR) as tar:
        assert not [n for n in tar.getnames() if n.endswith(".stdout")]  # only the tail travels back


def test_timestamps_are_rfc3339_utc(tmp_path: Path) -> None:
    from datetime import datetime

    _proc, job, _ = run_job(tmp_path, {"executors": [{"image": "a", "command": ["true"]}]})
    log = results(job, 1).executor_logs[0]
    assert log.start_time and log.end_time and log.start_time.endswith("Z")
    assert datetime.fromisoformat(log.start_time) <= datetime.fromisoformat(log.end_time)


def test_the_runtime_cli_gets_runtime_env_and_never_the_task_env(tmp_path: Path) -> None:
    """``runtime.env`` (e.g. DOCKER_HOST) reaches the runtime CLI; the task's env (LD_PRELOAD...) does not."""
    from tesp_api.engine.runtimes.docker import DockerRuntime

    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\nenv > "$TES_TEST_OUT"\n')
    fake.chmod(0o755)
    envfile = tmp_path / "cli.env"
    settings = RuntimeSettings(env={"DOCKER_HOST": "unix:///run/x.sock", "TES_TEST_OUT": str(envfile)})
    _proc, _job, _ = run_job(
        tmp_path,
        {
            "executors": [
                {
                    "image": "alpine",
                    "command": ["true"],
                    "env": {"LD_PRELOAD": "/tmp/evil.so", "SECRET": "s3"},
                }
            ]
        },
        runtime=DockerRuntime(binary=str(fake)),
        settings=settings,
    )
    cli_env = dict(line.split("=", 1) for line in envfile.read_text().splitlines())
    assert cli_env["DOCKER_HOST"] == "unix:///run/x.sock"
    assert "LD_PRELOAD" not in cli_env and "s3" not in envfile.read_text()


def test_a_killed_docker_job_has_its_container_removed(tmp_path: Path) -> None:
    """A stand-in docker CLI (a shell script recording its arguments). Killing the job's whole
    process tree with SIGKILL, as Pulsar's cancel does, must still lead to ``docker rm -f <container>``
    through the runner's detached watchdog. (Real docker and podman: tests/runtimes/.)"""
    from tesp_api.engine.runtimes.docker import DockerRuntime

    calls = tmp_path / "calls.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = run ] && exec sleep 300\nexit 0\n')
    fake.chmod(0o755)
    job, _task = write_job(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["sleep", "300"]}]},
        runtime=DockerRuntime(binary=str(fake)),
        tail_bytes=100,
    )
    proc = subprocess.Popen(runner_argv(job), cwd=job / "working", start_new_session=True)
    deadline = time.monotonic() + 20
    while not (calls.exists() and "run" in calls.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while "rm -f tes-t1-0" not in calls.read_text():
        assert time.monotonic() < deadline, calls.read_text()
        time.sleep(0.05)
    assert calls.read_text().splitlines()[0].startswith("run --rm -i --name tes-t1-0 ")


def test_a_finished_docker_job_runs_no_cleanup(tmp_path: Path) -> None:
    from tesp_api.engine.runtimes.docker import DockerRuntime

    calls = tmp_path / "calls.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$1" >> {calls}\n')
    fake.chmod(0o755)
    proc, _job, _ = run_job(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["true"]}]},
        runtime=DockerRuntime(binary=str(fake)),
    )
    assert proc.returncode == 0
    time.sleep(0.2)  # the watchdog would have run by now; it must not
    assert calls.read_text().split() == ["run"]


def test_sigterm_removes_the_container_and_stops(tmp_path: Path) -> None:
    from tesp_api.engine.runtimes.docker import DockerRuntime

    calls = tmp_path / "calls.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = run ] && exec sleep 300\nexit 0\n')
    fake.chmod(0o755)
    job, _task = write_job(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["sleep", "300"]}]},
        runtime=DockerRuntime(binary=str(fake)),
    )
    proc = subprocess.Popen(runner_argv(job), cwd=job / "working", start_new_session=True)
    deadline = time.monotonic() + 20
    while not (calls.exists() and "run" in calls.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert "rm -f tes-t1-0" in calls.read_text()
