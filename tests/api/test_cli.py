"""``tesp-api`` command line: help, version, clear errors with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tesp_api
from tesp_api.cli import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert tesp_api.__version__ in capsys.readouterr().out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("serve", "worker", "local", "hash-password"):
        assert command in out


def test_serve_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--settings", "--profile", "--host", "--port"):
        assert option in out


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_invalid_settings_exit_2_naming_the_key_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text("[default.api]\ncolour = 'blue'\n")
    assert main(["serve", "--settings", str(settings_file)]) == 2
    err = capsys.readouterr().err
    assert "api.colour" in err
    assert "Traceback" not in err


def test_worker_without_the_engine_exits_2_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tesp_api.engine.worker_main", None)  # import now fails
    monkeypatch.chdir(tmp_path)
    assert main(["worker"]) == 2
    assert "worker" in capsys.readouterr().err


def test_python_dash_m_tesp_api_is_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tesp_api", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert tesp_api.__version__ in done.stdout


def test_serve_with_an_unusable_store_path_exits_2_without_traceback(
    restore_root_logging: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TESP_API_ENGINE__ENABLED", "false")
    monkeypatch.setenv("TESP_API_DB__SQLITE_PATH", str(blocker / "tasks.sqlite3"))
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the task store" in err
    assert "Traceback" not in err
