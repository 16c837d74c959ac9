"""The job script, run for real with bash and bubblewrap in a directory laid out like a Pulsar job
(tool_files/, inputs/, working/) but without Pulsar: what it records and what reaches executors.
bwrap stands in for a container runtime: there is no Docker engine on these machines."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any

from tesp_api.engine.file_mapper import FileMapper
from tesp_api.engine.job_script import ALREADY_RAN_EXIT, META_TAR, SCRIPT_NAME, PlacedInput, build_job_script
from tesp_api.engine.results import read_results
from tesp_api.engine.runtimes.bwrap import BwrapRuntime
from tesp_api.tes.models import TesTask

NASTY = "echo $HOME; rm -rf /x'y \"z\" `id` \\ $(true)\n*"


def run_job(tmp: Path, spec: dict[str, Any], inputs: dict[str, bytes] | None = None,
            placed: list[PlacedInput] | None = None) -> tuple[subprocess.CompletedProcess[str], Path, TesTask]:
    task = TesTask.model_validate(spec)
    job = tmp / "job"
    for d in ("tool_files", "inputs", "working"):
        (job / d).mkdir(parents=True, exist_ok=True)
    for name, data in (inputs or {}).items():
        (job / "inputs" / name).write_bytes(data)
    runtime = BwrapRuntime()
    script = build_job_script(task, "t1", runtime, FileMapper(task, map_workdirs=True), placed or [], tail_bytes=1000)
    (job / "tool_files" / SCRIPT_NAME).write_text(script)
    proc = subprocess.run(["bash", str(job / "tool_files" / SCRIPT_NAME)], cwd=job / "working",
                          capture_output=True, text=True, timeout=60, check=False)
    return proc, job, task


def test_every_argument_reaches_the_executor_unchanged(tmp_path: Path) -> None:
    proc, job, _task = run_job(tmp_path, {"executors": [
        {"image": "alpine", "command": ["printf", "%s|", NASTY, "", "two words"]}]})
    results = read_results(job / "working" / META_TAR, 1)
    assert proc.returncode == 0
    assert results.executor_logs[0].stdout == f"{NASTY}||two words|"


def test_sh_c_sees_its_script_literally(tmp_path: Path) -> None:
    cmd = "echo \"$HOME\"; echo 'rm -rf /x'\"'\"'y'"
    _proc, job, _ = run_job(tmp_path, {"executors": [{"image": "alpine", "command": ["sh", "-c", cmd]}]})
    assert read_results(job / "working" / META_TAR, 1).executor_logs[0].stdout == "/tmp\nrm -rf /x'y\n"


def test_env_workdir_and_stdin_stdout_stderr(tmp_path: Path) -> None:
    _proc, job, _ = run_job(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["sh", "-c", "pwd; echo \"$V\"; cat; echo e >&2"],
                        "workdir": "/work/dir", "env": {"V": "a 'b' $c"}, "stdin": "/data/in.txt",
                        "stdout": "/data/out/stdout.txt", "stderr": "/data/out/stderr.txt"}],
         "inputs": [{"path": "/data/in.txt", "content": "from stdin\n"}]},
        inputs={"tes-in-0": b"from stdin\n"}, placed=[PlacedInput("tes-in-0", "/data/in.txt")],
    )
    fs = job / "working" / "fs"
    assert (fs / "data/out/stdout.txt").read_text() == "/work/dir\na 'b' $c\nfrom stdin\n"
    assert (fs / "data/out/stderr.txt").read_text() == "e\n"
    logs = read_results(job / "working" / META_TAR, 1).executor_logs
    assert logs[0].stdout == "/work/dir\na 'b' $c\nfrom stdin\n" and logs[0].stderr == "e\n"


def test_a_failing_executor_stops_the_sequence(tmp_path: Path) -> None:
    proc, job, _ = run_job(tmp_path, {"executors": [
        {"image": "a", "command": ["sh", "-c", "exit 3"]}, {"image": "a", "command": ["echo", "never"]}]})
    logs = read_results(job / "working" / META_TAR, 2).executor_logs
    assert proc.returncode == 3
    assert list(logs) == [0] and logs[0].exit_code == 3


def test_ignore_error_lets_the_next_executor_run(tmp_path: Path) -> None:
    proc, job, _ = run_job(tmp_path, {"executors": [
        {"image": "a", "command": ["sh", "-c", "exit 3"], "ignore_error": True},
        {"image": "a", "command": ["echo", "next"]}]})
    logs = read_results(job / "working" / META_TAR, 2).executor_logs
    assert proc.returncode == 0
    assert [logs[0].exit_code, logs[1].exit_code, logs[1].stdout] == [3, 0, "next\n"]


def test_volumes_are_shared_between_executors(tmp_path: Path) -> None:
    _proc, job, _ = run_job(tmp_path, {"volumes": ["/shared"], "executors": [
        {"image": "a", "command": ["sh", "-c", "echo hi > /shared/f"]},
        {"image": "a", "command": ["cat", "/shared/f"]}]})
    assert read_results(job / "working" / META_TAR, 2).executor_logs[1].stdout == "hi\n"


def test_manifest_lists_files_directories_and_wildcard_bases(tmp_path: Path) -> None:
    _proc, job, _ = run_job(tmp_path, {
        "executors": [{"image": "a", "command": ["sh", "-c",
                       "mkdir -p /o/d/sub && echo 1 > /o/f.txt && echo 22 > /o/d/sub/g && ln -s /etc/passwd /o/link"]}],
        "outputs": [{"path": "/o/f.txt", "url": "u"}, {"path": "/o/d", "url": "u", "type": "DIRECTORY"},
                    {"path": "/o/*.txt", "url": "u"}, {"path": "/o/link", "url": "u"},
                    {"path": "/o/missing", "url": "u"}]})
    manifest = read_results(job / "working" / META_TAR, 1).manifest
    got = sorted((e.output_index, e.size, e.container_path) for e in manifest)
    assert got == [(0, 2, "/o/f.txt"), (1, 3, "/o/d/sub/g"), (2, 2, "/o/f.txt"), (2, 3, "/o/d/sub/g")]


def test_the_script_never_runs_twice(tmp_path: Path) -> None:
    spec = {"executors": [{"image": "a", "command": ["sh", "-c", "echo run >> /v/count"]}], "volumes": ["/v"]}
    first, job, _ = run_job(tmp_path, spec)
    second = subprocess.run(["bash", str(job / "tool_files" / SCRIPT_NAME)], cwd=job / "working",
                            capture_output=True, text=True, check=False)
    assert (first.returncode, second.returncode) == (0, ALREADY_RAN_EXIT)
    assert (job / "working/fs/v/count").read_text() == "run\n"


def test_log_tails_are_cut(tmp_path: Path) -> None:
    _proc, job, _ = run_job(tmp_path, {"executors": [{"image": "a", "command": ["sh", "-c", "seq 1 5000"]}]})
    out = read_results(job / "working" / META_TAR, 1).executor_logs[0].stdout
    assert out is not None and len(out) == 1000 and out.endswith("4999\n5000\n")
    with tarfile.open(job / "working" / META_TAR) as tar:
        assert "./0.stdout" not in tar.getnames()  # only the tail travels back


def test_a_killed_docker_job_has_its_container_removed(tmp_path: Path) -> None:
    """A stand-in docker CLI (a shell script recording its arguments): there is no Docker engine
    on these machines. Killing the job's process group, as Pulsar's cancel does, must still lead to
    ``docker rm -f <container>`` through the job script's detached watchdog."""
    import os
    import signal
    import time

    from tesp_api.engine.runtimes.docker import DockerRuntime

    calls = tmp_path / "calls.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = run ] && exec sleep 300\nexit 0\n')
    fake.chmod(0o755)
    task = TesTask.model_validate({"executors": [{"image": "alpine", "command": ["sleep", "300"]}]})
    job = tmp_path / "job"
    for d in ("tool_files", "inputs", "working"):
        (job / d).mkdir(parents=True)
    script = build_job_script(task, "t1", DockerRuntime(binary=str(fake)), FileMapper(task, map_workdirs=False), [],
                              tail_bytes=100)
    (job / "tool_files" / SCRIPT_NAME).write_text(script)
    proc = subprocess.Popen(["bash", str(job / "tool_files" / SCRIPT_NAME)], cwd=job / "working",
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while not (calls.exists() and "run" in calls.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while "rm -f tes-t1-0" not in calls.read_text():
        assert time.monotonic() < deadline, calls.read_text()
        time.sleep(0.1)
    assert calls.read_text().splitlines()[0].startswith("run --rm -i --name tes-t1-0 ")
