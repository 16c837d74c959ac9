"""Issues 10/11: an executor's env values never appear on any command line (/proc/*/cmdline is readable
by every user of the Pulsar host). They reach the runtime through a 0600 file (docker/podman
``--env-file``, removed after the executor), an fd (bwrap ``--args``) or prefixed variables of the
runtime process (apptainer ``APPTAINERENV_*``). The runtime CLI itself never gets the task's env.
bwrap runs for real; docker and apptainer are stand-in CLIs that record what they were given (the real
docker/podman check is tests/runtimes/)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

from tesp_api.config.settings import RuntimeSettings
from tests.engine.test_job_script import runner_argv, write_job
from tests.security.runner_harness import run_task

SECRET = "s3cr3t-value-9d1f"


def cmdlines() -> list[bytes]:
    out = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(p.read_bytes())
        except OSError:
            continue
    return out


def test_bwrap_env_values_are_on_no_command_line_while_the_executor_runs(tmp_path: Path) -> None:
    marker = tmp_path / "job" / "working" / "fs" / "v" / "started"
    job, _task = write_job(
        tmp_path,
        {
            "volumes": ["/v"],
            "executors": [
                {
                    "image": "a",
                    "command": ["sh", "-c", 'echo "$TOKEN" > /v/seen; touch /v/started; sleep 30'],
                    "env": {"TOKEN": SECRET},
                }
            ],
        },
        settings=RuntimeSettings(type="bwrap"),
    )
    proc = subprocess.Popen(
        runner_argv(job),
        cwd=job / "working",
        stdout=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"]},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert not [c for c in cmdlines() if SECRET.encode() in c]
        assert (marker.parent / "seen").read_text() == SECRET + "\n"  # ... yet the executor has it
        assert stat.S_IMODE((job / "tool_files" / "tes-job.json").stat().st_mode) == 0o600
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_docker_gets_the_env_as_a_0600_file_that_is_removed_afterwards(tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    fake = tmp_path / "docker"
    fake.write_text(f"""#!/bin/sh
echo "ARGV $*" >> {log}
while [ $# -gt 0 ]; do
  if [ "$1" = --env-file ]; then echo "MODE $(stat -c %a "$2")" >> {log}; cat "$2" >> {log}; fi
  shift
done
""")
    fake.chmod(0o755)
    proc, job, _res = run_task(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["true"], "env": {"TOKEN": SECRET, "B": "x y,z"}}]},
        settings=RuntimeSettings(type="docker", docker_bin=str(fake)),
    )
    text = log.read_text()
    assert proc.returncode == 0
    argv_line = next(line for line in text.splitlines() if line.startswith("ARGV"))
    assert SECRET not in argv_line and "--env-file" in argv_line
    assert "MODE 600" in text and f"TOKEN={SECRET}\nB=x y,z\n" in text
    assert not list((job / "working" / "tes-meta").glob("*.env"))


def test_apptainer_gets_the_env_as_prefixed_variables_not_argv(tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    fake = tmp_path / "apptainer"
    fake.write_text(f'#!/bin/sh\necho "ARGV $*" >> {log}\nenv >> {log}\n')
    fake.chmod(0o755)
    _proc, _job, _res = run_task(
        tmp_path,
        {
            "executors": [
                {"image": "alpine", "command": ["true"], "env": {"TOKEN": SECRET, "LD_PRELOAD": "/x.so"}}
            ]
        },
        settings=RuntimeSettings(type="apptainer", apptainer_bin=str(fake)),
    )
    lines = log.read_text().splitlines()
    assert SECRET not in lines[0]
    assert f"APPTAINERENV_TOKEN={SECRET}" in lines and "APPTAINERENV_LD_PRELOAD=/x.so" in lines
    assert not [line for line in lines if line.startswith("LD_PRELOAD=")]  # never the host binary's own env


def test_an_env_value_with_a_line_break_is_refused_not_split(tmp_path: Path) -> None:
    """An env file cannot carry a line break: a value with one would inject a second variable. Admission
    refuses it (tes/jobplan.py); the runner refuses it again (a spec written by something else)."""
    import json

    log = tmp_path / "cli.log"
    fake = tmp_path / "docker"
    fake.write_text(f"#!/bin/sh\necho ran >> {log}\n")
    fake.chmod(0o755)
    job, _task = write_job(
        tmp_path,
        {"executors": [{"image": "alpine", "command": ["true"], "env": {"A": "x"}}]},
        settings=RuntimeSettings(type="docker", docker_bin=str(fake)),
    )
    spec_file = job / "tool_files" / "tes-job.json"
    spec = json.loads(spec_file.read_text())
    spec["executors"][0]["env"]["A"] = "x\nLD_PRELOAD=/evil.so"
    spec_file.write_text(json.dumps(spec))
    subprocess.run(runner_argv(job), cwd=job / "working", capture_output=True, check=False, timeout=60)
    from tesp_api.engine.results import read_results

    res = read_results(job / "working" / "tes-meta.tar", 1)
    assert not log.exists() and "line break" in res.system[0].message
