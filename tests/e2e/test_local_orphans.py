"""Ctrl-C of `tesp-api local` while a task runs leaves no process of its job behind, and the task
ends after a restart (docs/engine.md, "Crash runs").

Pulsar starts every job in a process group of its own, so stopping Pulsar alone left the job
(command.sh -> runner -> bwrap -> the command) running under init, and the restarted Pulsar answered
"running" for it for ever. `local` now stops those process groups after Pulsar, and the restarted
service ends the task PREEMPTED (the system stopped it) within ``pulsar.lost_job_deadline``.

Real parts: `tesp-api local` as a child process (its own Pulsar child), bubblewrap, /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.services.tesp_local import LocalServiceProcess

pytestmark = [pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(600)]
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, argv) of every process on the host."""
    found: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[19]), argv)
    return found


def tree(root: int) -> dict[int, tuple[int, str]]:
    """The process ``root`` and all its descendants: pid -> (start time, argv)."""
    procs = processes()
    out: dict[int, tuple[int, str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in out:
            out[pid] = (procs[pid][1], procs[pid][2])
            todo += [child for child, (ppid, _, _) in procs.items() if ppid == pid]
    return out


def still_running(seen: dict[int, tuple[int, str]]) -> list[str]:
    procs = processes()
    return [argv for pid, (start, argv) in seen.items() if pid in procs and procs[pid][1] == start]


def get_task(local: LocalServiceProcess, task_id: str) -> dict[str, object]:
    return dict(
        httpx.get(f"{local.url}/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json()
    )


def test_ctrl_c_stops_the_running_job_and_a_restart_ends_its_task(tmp_path: Path) -> None:
    env = {"TESP_API_RUNTIME__TYPE": "bwrap", "TESP_API_PULSAR__LOST_JOB_DEADLINE": "10"}
    local = LocalServiceProcess(tmp_path, **env)
    local.start()
    try:
        task = {"executors": [{"image": "alpine", "command": ["sleep", "30"]}]}
        task_id = str(httpx.post(f"{local.url}/ga4gh/tes/v1/tasks", json=task, timeout=10).json()["id"])
        pid_file = tmp_path / "state" / "pulsar" / "files" / "staging" / task_id / "pid"
        deadline = time.monotonic() + 180  # a loaded machine starts a job slowly
        job: dict[int, tuple[int, str]] = {}
        while not any(argv == "sleep 30" for _, argv in job.values()):
            assert time.monotonic() < deadline, f"the job never started: {job}"
            time.sleep(0.2)
            if pid_file.exists():
                job = tree(int(pid_file.read_text().strip().strip('"')))
        assert local.process is not None
        os.kill(local.process.pid, signal.SIGINT)  # what Ctrl-C sends
        local.process.wait(timeout=60)
        assert still_running(job) == [], local.log_text()
    finally:
        local.stop()

    restarted = LocalServiceProcess(tmp_path, **env)
    restarted.start()
    try:
        deadline = time.monotonic() + 120
        while (state := get_task(restarted, task_id))["state"] not in FINAL:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
    finally:
        restarted.stop()
    assert state["state"] == "PREEMPTED", state
    assert any("were killed" in line for line in state["logs"][0]["system_logs"]), state  # type: ignore[index]


def test_a_pid_file_naming_some_other_process_is_never_signalled(tmp_path: Path) -> None:
    """A stale pid file whose pid now belongs to another process group (pid reuse) is skipped: the
    group counts only while its leader runs in the job's own working directory."""
    from tesp_api.local import LocalPulsar

    pulsar = LocalPulsar(tmp_path / "pulsar")
    stranger = subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True)
    try:
        for job in ("stale", "live"):
            (pulsar.staging_directory / job / "working").mkdir(parents=True)
        ours_proc = subprocess.Popen(
            ["sleep", "60"], cwd=pulsar.staging_directory / "live" / "working", start_new_session=True
        )
        try:
            (pulsar.staging_directory / "stale" / "pid").write_text(f'"{stranger.pid}"')
            (pulsar.staging_directory / "live" / "pid").write_text(f'"{ours_proc.pid}"')
            assert pulsar.job_process_groups() == {"live": ours_proc.pid}
            assert pulsar.stop_jobs(timeout=10) == ["live"]
            assert ours_proc.wait(timeout=10) == -signal.SIGTERM
            assert stranger.poll() is None
        finally:
            ours_proc.kill()
            ours_proc.wait()
    finally:
        stranger.kill()
        stranger.wait()
