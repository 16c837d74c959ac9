"""Pulsar server settings: every server gets a backend, and amqp_url means AMQP (drop-in for tesp-api 0.2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tesp_api.config import SettingsError, load_settings
from tesp_api.engine.engine import build_backends
from tesp_api.pulsar.amqp import AmqpBackend
from tesp_api.pulsar.rest import RestBackend
from tesp_api.pulsar.retrying import unwrap

REPO = Path(__file__).resolve().parents[2]
BROKER = "amqp://tesp:not-guest@127.0.0.1:5672/"  # nothing connects: building a backend opens nothing


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("TESP_API") or key in {"FASTAPI_PROFILE", "CONTAINER_TYPE"}:
            monkeypatch.delenv(key)
    monkeypatch.setenv("TESP_API_ENGINE__WORK_DIR", str(tmp_path / "work"))  # the AMQP staging key file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_a_server_with_neither_url_nor_amqp_url_is_refused_naming_it(tmp_path: Path) -> None:
    text = (
        '[[default.pulsar.servers]]\nname = "rest"\nurl = "http://127.0.0.1:8913"\n'
        '[[default.pulsar.servers]]\nname = "forgotten"\n'
    )
    with pytest.raises(SettingsError, match=r"servers\[1\] \(name 'forgotten'\).*needs `url`"):
        load_settings(write(tmp_path, text))


def test_the_single_server_form_without_url_or_amqp_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"pulsar\.url.*pulsar\.amqp_url"):
        load_settings(write(tmp_path, '[default.pulsar]\nurl = ""\n'))


def test_two_servers_with_one_name_are_refused(tmp_path: Path) -> None:
    text = (
        '[[default.pulsar.servers]]\nname = "a"\nurl = "http://127.0.0.1:8913"\n'
        '[[default.pulsar.servers]]\nname = "a"\nurl = "http://127.0.0.1:8914"\n'
    )
    with pytest.raises(SettingsError, match=r"servers\[1\] \(name 'a'\).*unique"):
        load_settings(write(tmp_path, text))


def test_amqp_url_from_the_environment_switches_the_shipped_settings_to_amqp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped settings.toml sets pulsar.url; TESP_API_PULSAR__AMQP_URL alone must still mean AMQP."""
    monkeypatch.setenv("TESP_API_PULSAR__AMQP_URL", BROKER)
    settings = load_settings(REPO / "settings.toml")
    assert settings.pulsar.url  # still set by the file
    (server,) = settings.pulsar.effective_servers()
    assert server.transport == "amqp"
    backends = build_backends(settings)
    assert isinstance(unwrap(backends["default"]), AmqpBackend)


def test_the_shipped_settings_without_amqp_url_use_rest() -> None:
    settings = load_settings(REPO / "settings.toml")
    backends = build_backends(settings)
    assert isinstance(unwrap(backends["default"]), RestBackend)


def test_rest_and_amqp_servers_run_side_by_side_through_servers(tmp_path: Path) -> None:
    text = (
        '[[default.pulsar.servers]]\nname = "rest"\nurl = "http://127.0.0.1:8913"\n'
        f'[[default.pulsar.servers]]\nname = "amqp"\namqp_url = "{BROKER}"\n'
    )
    backends = build_backends(load_settings(write(tmp_path, text)))
    assert isinstance(unwrap(backends["rest"]), RestBackend)
    assert isinstance(unwrap(backends["amqp"]), AmqpBackend)
