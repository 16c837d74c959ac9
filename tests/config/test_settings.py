"""Settings: profiles, environment overrides, strict validation, compatibility with tesp-api 0.2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesp_api.config import SettingsError, load_settings
from tesp_api.config.reference import render

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TESP_API") or key in {"FASTAPI_PROFILE", "CONTAINER_TYPE"}:
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_settings_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "missing.toml")
    assert settings.api.host == "127.0.0.1"
    assert settings.db.mongodb_uri is None


def test_profile_inherits_from_default_and_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[default.api]\nport = 9000\nhost = "127.0.0.1"\n[prod.api]\nhost = "0.0.0.0"\n')
    settings = load_settings(path, profile="prod")
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 9000)


def test_fastapi_profile_variable_picks_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[default.api]\nport = 9000\n[dev-docker.api]\nport = 9001\n")
    monkeypatch.setenv("FASTAPI_PROFILE", "dev-docker")
    assert load_settings(path).api.port == 9001


def test_prefixed_environment_variable_overrides_a_nested_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESP_API_PULSAR__STATUS__POLL_INTERVAL", "0.5")
    monkeypatch.setenv("TESP_API_DB__MONGODB_URI", "mongodb://db:27017")
    settings = load_settings(write(tmp_path, ""))
    assert settings.pulsar.status.poll_interval == 0.5
    assert settings.db.mongodb_uri is not None
    assert settings.db.mongodb_uri.get_secret_value() == "mongodb://db:27017"


def test_secrets_file_beside_settings_is_read(tmp_path: Path) -> None:
    (tmp_path / ".secrets.toml").write_text('[default.pulsar]\nprivate_token = "s3cret"\n')
    settings = load_settings(write(tmp_path, ""))
    assert settings.pulsar.private_token is not None
    assert settings.pulsar.private_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_unknown_key_stops_the_start_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"pulsar\.pol_interval: unknown setting"):
        load_settings(write(tmp_path, "[default.pulsar]\npol_interval = 3\n"))


def test_wrong_type_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"api\.port"):
        load_settings(write(tmp_path, '[default.api]\nport = "eighty"\n'))


def test_container_type_variable_picks_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_TYPE", "singularity")
    assert load_settings(write(tmp_path, "")).runtime.type == "singularity"


def test_tesp_api_0_2_keys_are_accepted(tmp_path: Path) -> None:
    text = (
        '[default.db]\nmongodb_uri = "mongodb://tesp-db:27017"\n'
        '[default.pulsar]\nurl = "http://pulsar_rest:8913"\nclient_timeout = 10\n'
        "[default.pulsar.status]\npoll_interval = 4\nmax_polls = 400\n"
        '[default.logging]\nlevel = "debug"\noutput_json = true\n'
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.pulsar.effective_servers()[0].url == "http://pulsar_rest:8913"
    assert settings.logging.level == "DEBUG"


def test_the_repository_settings_file_loads_in_every_profile() -> None:
    for profile in ("default", "dev-docker", "dev-docker-amqp"):
        load_settings(REPO / "settings.toml", profile=profile)


def test_settings_reference_in_docs_is_current() -> None:
    assert (REPO / "docs" / "settings.md").read_text() == render(), (
        "run: python -m tesp_api.config.reference > docs/settings.md"
    )
