"""Issue 10: host-side stream handling never follows what a container planted. Executor 0 (the
attacker) plants a symbolic link, FIFO or linked directory in a shared TES directory; executor 1's
stdin/stdout/stderr (opened by the runner ON THE HOST) go through it. The runner opens every path
component with O_NOFOLLOW from the job's own directory: nothing is created, written or read outside
the job directory, the executor is not started and its log says why (EXECUTOR_ERROR).
Real runner, real bwrap, no Pulsar (tests/security/runner_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.runner_harness import run_task, tree


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory outside the job: it must stay exactly as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("host secret\n")
    return d


def plant(cmd: str) -> dict[str, object]:
    return {"image": "alpine", "command": ["sh", "-c", cmd]}


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_stream_through_a_planted_directory_link_writes_nothing_outside(
    tmp_path: Path, outside: Path, stream: str
) -> None:
    proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside} /data/x"),
                {"image": "alpine", "command": ["echo", "pwned"], stream: "/data/x/pwned"},
            ],
        },
    )
    assert tree(outside) == ["secret.txt"]
    assert proc.returncode != 0 and res.system[1].kind == "task"
    assert "/data/x/pwned" not in res.system[1].message or "link" in res.system[1].message


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_stream_that_is_a_planted_file_link_is_not_opened(
    tmp_path: Path, outside: Path, stream: str
) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside}/secret.txt /data/out"),
                {"image": "alpine", "command": ["echo", "overwritten"], stream: "/data/out"},
            ],
        },
    )
    assert (outside / "secret.txt").read_text() == "host secret\n"
    assert res.system[1].kind == "task" and "symbolic link" in res.system[1].message


def test_a_stream_in_a_new_directory_below_a_planted_link_creates_nothing_outside(
    tmp_path: Path, outside: Path
) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside} /data/x"),
                {"image": "alpine", "command": ["echo", "x"], "stdout": "/data/x/new/dir/out"},
            ],
        },
    )
    assert tree(outside) == ["secret.txt"] and 1 in res.system


def test_stdin_through_a_planted_link_reads_no_host_file(tmp_path: Path, outside: Path) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside}/secret.txt /data/in"),
                {"image": "alpine", "command": ["cat"], "stdin": "/data/in"},
            ],
        },
    )
    assert 1 not in res.executor_logs or "host secret" not in (res.executor_logs[1].stdout or "")
    assert res.system[1].kind == "task"


def test_stdin_through_a_planted_directory_link_reads_no_host_file(tmp_path: Path, outside: Path) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside} /data/d"),
                {"image": "alpine", "command": ["cat"], "stdin": "/data/d/secret.txt"},
            ],
        },
    )
    assert "host secret" not in (res.executor_logs[1].stdout or "") and res.system[1].kind == "task"


@pytest.mark.parametrize("stream", ["stdin", "stdout"])
def test_a_planted_fifo_is_refused_without_blocking(tmp_path: Path, stream: str) -> None:
    """Opening a FIFO would block the runner (or feed it from an attacker's writer)."""
    proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant("mkfifo /data/fifo"),
                {"image": "alpine", "command": ["true"], stream: "/data/fifo"},
            ],
        },
        timeout=30,
    )
    assert proc.returncode != 0 and "FIFO" in res.system[1].message


def test_a_failed_stream_stops_the_sequence_like_a_failed_executor(tmp_path: Path, outside: Path) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside} /data/x"),
                {"image": "alpine", "command": ["echo", "x"], "stdout": "/data/x/f"},
                {"image": "alpine", "command": ["echo", "never"]},
            ],
        },
    )
    assert sorted(res.executor_logs) == [0, 1] and res.executor_logs[1].exit_code != 0


def test_a_workdir_below_a_planted_link_is_not_created_outside(tmp_path: Path, outside: Path) -> None:
    _proc, _job, res = run_task(
        tmp_path,
        {
            "volumes": ["/data"],
            "executors": [
                plant(f"ln -s {outside} /data/w"),
                {"image": "alpine", "command": ["pwd"], "workdir": "/data/w/sub"},
            ],
        },
    )
    assert tree(outside) == ["secret.txt"] and res.system[1].kind == "task"


def test_an_output_directory_through_a_link_lists_nothing(tmp_path: Path, outside: Path) -> None:
    _proc, job, res = run_task(
        tmp_path,
        {
            "executors": [plant(f"mkdir -p /o && ln -s {outside} /o/d")],
            "outputs": [
                {"path": "/o/d", "url": "file:///x", "type": "DIRECTORY"},
                {"path": "/o/d/secret.txt", "url": "file:///y"},
                {"path": "/o/*", "url": "file:///z"},
            ],
        },
    )
    assert res.manifest == []
    assert tree(job / "working" / "tes-out") == []


def test_an_output_file_that_is_a_link_is_not_listed_or_copied(tmp_path: Path, outside: Path) -> None:
    _proc, job, res = run_task(
        tmp_path,
        {
            "executors": [plant(f"mkdir -p /o && ln -s {outside}/secret.txt /o/f && echo ok > /o/g")],
            "outputs": [{"path": "/o/f", "url": "file:///x"}, {"path": "/o/g", "url": "file:///y"}],
        },
    )
    assert [e.container_path for e in res.manifest] == ["/o/g"]
    assert tree(job / "working" / "tes-out") == ["o", "o/g"]


def test_the_output_snapshot_is_not_changed_by_a_later_link_swap(tmp_path: Path, outside: Path) -> None:
    """What is fetched is the runner's hard link of the regular file it listed, not a path in fs/."""
    _proc, job, _res = run_task(
        tmp_path,
        {
            "executors": [plant("mkdir -p /o && echo mine > /o/f")],
            "outputs": [{"path": "/o/f", "url": "file:///x"}],
        },
    )
    fs_file = job / "working" / "fs" / "o" / "f"
    fs_file.unlink()
    fs_file.symlink_to(outside / "secret.txt")  # what a lingering container could do after the listing
    assert (job / "working" / "tes-out" / "o" / "f").read_text() == "mine\n"


def test_an_input_archive_with_a_link_leaving_the_directory_is_refused(tmp_path: Path, outside: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        f = tarfile.TarInfo("escape/pwned")
        f.size = 2
        tar.addfile(f, io.BytesIO(b"x\n"))
    from tesp_api.engine.job_script import PlacedInput

    proc, _job, _res = run_task(
        tmp_path,
        {
            "inputs": [{"path": "/in/d", "url": "file:///x", "type": "DIRECTORY"}],
            "executors": [{"image": "a", "command": ["true"]}],
        },
        inputs={"tes-in-0.tar": buf.getvalue()},
        placed=[PlacedInput("tes-in-0.tar", "/in/d", True)],
    )
    assert proc.returncode == 70 and "cannot set up" in proc.stderr
    assert tree(outside) == ["secret.txt"]
