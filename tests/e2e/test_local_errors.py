"""`tesp-api local` refuses to start, with a clear message and exit code 2 (as serve and worker do),
before it starts anything: bad settings, an unknown profile, a busy port, a state directory already in
use or one that bubblewrap executors could see. No Pulsar is started by these tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tesp_api.cli import main as cli_main
from tesp_api.local import free_port, lock_state_dir
from tesp_api.local import main as local_main

SETTINGS = """\
[default.api]
port = 8080

[broken]
[broken.api]
colour = "blue"

[other]
[other.api]
port = 9090
"""


@pytest.fixture
def settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A settings file of the test's own; none of the caller's TESP_API_* or profile variables."""
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    for var in ("FASTAPI_PROFILE", "CONTAINER_TYPE", "TESP_API_SETTINGS"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("TESP_API_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return path


def run_local(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = local_main(list(args))
    return code, capsys.readouterr().err


def test_a_wrong_setting_exits_2_naming_the_key_like_serve(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_local(
        capsys,
        "--settings",
        str(settings_file),
        "--profile",
        "broken",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert code == 2
    assert "api.colour: unknown setting" in err
    assert "Traceback" not in err and "pydantic" not in err
    assert cli_main(["serve", "--settings", str(settings_file), "--profile", "broken"]) == 2
    serve_err = capsys.readouterr().err
    assert err.split(":", 1)[1] == serve_err.split(":", 1)[1]  # the same message after the command's name
    assert not (tmp_path / "state").exists()  # nothing was started or created


def test_a_wrong_setting_through_the_environment_exits_2(
    settings_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TESP_API_ENGINE__MAX_RUNNING_TASKS", "-1")
    code, err = run_local(capsys, "--settings", str(settings_file), "--state-dir", str(tmp_path / "state"))
    assert code == 2
    assert "engine.max_running_tasks" in err


def test_an_unknown_profile_in_the_environment_stops_the_start_naming_the_profiles(
    settings_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FASTAPI_PROFILE", "nope")
    code, err = run_local(capsys, "--settings", str(settings_file), "--state-dir", str(tmp_path / "state"))
    assert code == 2
    assert "unknown profile 'nope' ($FASTAPI_PROFILE)" in err
    assert "broken, default, other" in err


def test_an_unknown_profile_option_stops_serve_and_worker_too(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_local(
        capsys, "--settings", str(settings_file), "--profile", "nope", "--state-dir", str(tmp_path / "state")
    )
    assert code == 2 and "unknown profile 'nope' (--profile)" in err
    for command in ("serve", "worker"):
        assert cli_main([command, "--settings", str(settings_file), "--profile", "nope"]) == 2
        assert "unknown profile 'nope'" in capsys.readouterr().err


def test_the_profile_option_wins_over_the_environment(
    settings_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FASTAPI_PROFILE", "other")  # valid, but --profile names the broken one
    code, err = run_local(
        capsys,
        "--settings",
        str(settings_file),
        "--profile",
        "broken",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert code == 2 and "api.colour" in err


def test_a_busy_api_port_stops_the_start_before_pulsar(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, err = run_local(
            capsys,
            "--settings",
            str(settings_file),
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
        )
    assert code == 2
    assert f"127.0.0.1:{port} is already in use" in err
    assert not (tmp_path / "state" / "pulsar").exists()


def test_a_state_directory_in_use_is_refused(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    held = lock_state_dir(state)  # what a running `tesp-api local` holds
    try:
        code, err = run_local(
            capsys, "--settings", str(settings_file), "--port", str(free_port()), "--state-dir", str(state)
        )
    finally:
        held.close()
    assert code == 2
    assert "another `tesp-api local`" in err and str(state) in err
    assert not (state / "pulsar").exists()  # the first one's Pulsar config is left alone


def test_a_state_directory_bubblewrap_executors_see_is_refused(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_local(
        capsys,
        "--settings",
        str(settings_file),
        "--port",
        str(free_port()),
        "--state-dir",
        "/opt/tesp-api-test-never-created/state",
    )
    assert code == 2
    assert "under /opt, which bubblewrap executors see" in err
    assert not Path("/opt/tesp-api-test-never-created").exists()


def test_local_help_lists_the_options_the_readme_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["local", "--help"])
    out = capsys.readouterr().out
    for option in ("--settings", "--profile", "--state-dir", "--host", "--port", "--pulsar-port"):
        assert option in out
