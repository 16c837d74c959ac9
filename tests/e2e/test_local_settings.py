"""What `tesp-api local` sets over the user's settings: its state directory holds the task store and
scratch unless db.sqlite_path / engine.work_dir are set explicitly; Pulsar is its own child, on a
socket, with a token; the runner uses this interpreter. And CONTAINER_TYPE (tesp-api 0.2) picks the
runtime over the shipped settings.toml's "auto". No process is started here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.loader import load_raw, validate_settings
from tesp_api.config.settings import Settings
from tesp_api.local import LocalPulsar, build_parser, local_pulsar, local_raw_settings, new_private_token

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("TESP_API_")] + ["FASTAPI_PROFILE", "CONTAINER_TYPE"]:
        monkeypatch.delenv(var, raising=False)


def local_settings(raw: dict[str, Any], state: Path, *argv: str) -> tuple[Settings, LocalPulsar]:
    args = build_parser().parse_args(["--state-dir", str(state), *argv])
    pulsar = LocalPulsar(state / "pulsar", private_token=new_private_token(), unix_socket=True)
    local_raw_settings(raw, args, state, pulsar)
    return validate_settings(raw), pulsar


def test_the_state_dir_holds_the_store_with_the_shipped_settings(tmp_path: Path) -> None:
    settings, _ = local_settings(load_raw(REPO / "settings.toml"), tmp_path / "state")
    assert settings.db.sqlite_path == str(tmp_path / "state" / "tasks.sqlite3")
    assert settings.engine.work_dir == str(tmp_path / "state" / "work")


def test_an_explicit_sqlite_path_wins_over_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESP_API_DB__SQLITE_PATH", str(tmp_path / "mine.sqlite3"))
    settings, _ = local_settings(load_raw(REPO / "settings.toml"), tmp_path / "state")
    assert settings.db.sqlite_path == str(tmp_path / "mine.sqlite3")


def test_pulsar_is_the_local_child_on_its_socket_with_its_token(tmp_path: Path) -> None:
    raw = {
        "pulsar": {"url": "http://elsewhere:8913", "amqp_url": "amqp://u:p@broker//", "private_token": "x"}
    }
    settings, pulsar = local_settings(raw, tmp_path / "state")
    (server,) = settings.pulsar.effective_servers()
    assert server.uds == str(tmp_path / "state" / "pulsar" / "pulsar.sock") == pulsar.uds
    assert server.amqp_url is None
    assert (
        server.private_token is not None and server.private_token.get_secret_value() == pulsar.private_token
    )
    assert pulsar.private_token != new_private_token()  # random at each start


def test_the_job_runner_uses_this_interpreter(tmp_path: Path) -> None:
    settings, _ = local_settings({}, tmp_path / "state")
    assert settings.runtime.runner_python == sys.executable


def test_container_type_wins_over_the_shipped_settings_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_TYPE", "bwrap")
    assert validate_settings(load_raw(REPO / "settings.toml")).runtime.type == "bwrap"


def test_tesp_api_runtime_type_wins_over_container_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_TYPE", "bwrap")
    monkeypatch.setenv("TESP_API_RUNTIME__TYPE", "podman")
    assert validate_settings(load_raw(REPO / "settings.toml")).runtime.type == "podman"


def test_pulsar_port_puts_pulsar_on_loopback_tcp_with_its_token(tmp_path: Path) -> None:
    pulsar = local_pulsar(tmp_path / "pulsar", 18913)
    assert pulsar.uds is None and pulsar.url == "http://127.0.0.1:18913"
    assert pulsar.private_token


def test_a_socket_path_too_long_to_bind_falls_back_to_tcp_with_a_token(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100) / "pulsar"
    pulsar = local_pulsar(deep, None)
    assert pulsar.uds is None and pulsar.url.startswith("http://127.0.0.1:")
    assert pulsar.private_token
    assert local_pulsar(tmp_path / "pulsar", None).uds == str(tmp_path / "pulsar" / "pulsar.sock")
