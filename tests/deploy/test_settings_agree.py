"""settings.toml's dev-docker profiles name the compose services, ports and paths that exist.

The profiles are loaded with the service's own loader (tesp_api.config.load_settings) with the
environment docker-compose.yaml gives the tesp-api container, so a renamed service, a moved port or
a mistyped TESP_API_* variable fails here instead of at the first `docker compose up`.
"""

from __future__ import annotations

import configparser
from urllib.parse import urlsplit

import pytest

from tesp_api.config import load_settings
from tesp_api.config.settings import Settings
from tests.deploy import compose
from tests.deploy.conftest import MAIN_ENV

SETTINGS_FILE = compose.REPO / "settings.toml"
AMQP_ENV = {
    **MAIN_ENV,
    "FASTAPI_PROFILE": "dev-docker-amqp",
    "AMQP_URL": "amqp://tesp:abc123@rabbitmq:5672//",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TESP_API_") or name in ("FASTAPI_PROFILE", "CONTAINER_TYPE"):
            monkeypatch.delenv(name)


def container_settings(monkeypatch: pytest.MonkeyPatch, compose_env: dict[str, str]) -> Settings:
    """The settings tesp-api loads inside its container, given the .env values in ``compose_env``."""
    service = compose.load(compose.MAIN_FILE, compose_env)["services"]["tesp-api"]
    env = compose.environment(service)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(SETTINGS_FILE, profile=env["FASTAPI_PROFILE"])


def services() -> dict[str, dict]:  # type: ignore[type-arg]
    return compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]  # type: ignore[no-any-return]


def exposed(service: str) -> set[int]:
    return {int(port) for port in services()[service].get("expose", [])}


def test_the_container_uses_the_dev_docker_profile_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]["tesp-api"]
    assert compose.environment(service)["FASTAPI_PROFILE"] == "dev-docker"


def test_mongodb_uri_names_the_tesp_db_service_with_credentials_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = container_settings(monkeypatch, MAIN_ENV)
    assert settings.db.mongodb_uri is not None
    uri = urlsplit(settings.db.mongodb_uri.get_secret_value())
    assert (uri.hostname, uri.port) == ("tesp-db", 27017)
    assert 27017 in exposed("tesp-db")
    assert (uri.username, uri.password) == (
        MAIN_ENV["MONGO_INITDB_ROOT_USERNAME"],
        MAIN_ENV["MONGO_INITDB_ROOT_PASSWORD"],
    )
    assert (settings.db.mongodb_database, settings.db.mongodb_collection) == ("tesp", "tasks")


def test_settings_toml_itself_holds_no_credentials() -> None:
    for profile in ("dev-docker", "dev-docker-amqp"):
        settings = load_settings(SETTINGS_FILE, profile=profile)
        for secret in (settings.db.mongodb_uri, settings.pulsar.amqp_url, settings.pulsar.private_token):
            if secret is not None:
                assert urlsplit(secret.get_secret_value()).password is None, profile


def test_rest_pulsar_url_names_the_pulsar_rest_service_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(monkeypatch, MAIN_ENV)
    assert settings.pulsar.amqp_url is None  # "@del" in compose: REST mode
    assert settings.pulsar.url is not None
    url = urlsplit(settings.pulsar.url)
    assert url.hostname == "pulsar_rest"
    assert url.port in exposed("pulsar_rest")
    server_ini = configparser.ConfigParser()
    server_ini.read(compose.REPO / "docker" / "pulsar" / "server.ini")
    assert int(server_ini["server:main"]["port"]) == url.port
    assert settings.pulsar.private_token is not None
    assert settings.pulsar.private_token.get_secret_value() == MAIN_ENV["PULSAR_PRIVATE_TOKEN"]


def test_amqp_profile_names_the_rabbitmq_service_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(monkeypatch, AMQP_ENV)
    assert settings.pulsar.amqp_url is not None
    url = urlsplit(settings.pulsar.amqp_url.get_secret_value())
    assert url.hostname == "rabbitmq"
    assert url.port in exposed("rabbitmq")
    assert not settings.pulsar.url


def test_amqp_profile_in_settings_toml_names_rabbitmq_without_a_password() -> None:
    amqp_url = load_settings(SETTINGS_FILE, profile="dev-docker-amqp").pulsar.amqp_url
    assert amqp_url is not None
    url = urlsplit(amqp_url.get_secret_value())
    assert (url.hostname, url.password) == ("rabbitmq", None)


def test_the_amqp_pulsar_gets_the_same_broker_url_as_tesp_api(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(monkeypatch, AMQP_ENV)
    pulsar = compose.load(compose.MAIN_FILE, AMQP_ENV)["services"]["pulsar_amqp"]
    assert settings.pulsar.amqp_url is not None
    assert (
        compose.environment(pulsar)["PULSAR_CONFIG_OVERRIDE_MESSAGE_QUEUE_URL"]
        == settings.pulsar.amqp_url.get_secret_value()
    )


def test_api_listens_on_the_published_container_port_and_public_url_names_tesp_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = container_settings(monkeypatch, MAIN_ENV)
    ((_, _, container_port),) = compose.host_ports(services()["tesp-api"])
    assert settings.api.port == int(container_port) == 8080
    assert settings.api.host == "0.0.0.0"
    assert settings.api.public_url is not None
    public = urlsplit(settings.api.public_url)
    assert (public.hostname, public.port) == ("tesp-api", 8080)
    assert ":8080/" in " ".join(services()["tesp-api"]["healthcheck"]["test"])


def test_tasks_run_in_docker_in_both_compose_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # One container's environment at a time: the first's TESP_API_* variables (e.g. an amqp_url removed
    # with '@del') must not leak into the second profile's load.
    with monkeypatch.context() as env:
        assert container_settings(env, MAIN_ENV).runtime.type == "docker"
    assert load_settings(SETTINGS_FILE, profile="dev-docker-amqp").runtime.type == "docker"


def test_amqp_remote_staging_server_is_reachable_by_name_inside_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = container_settings(monkeypatch, AMQP_ENV)
    assert settings.pulsar.staging_url is not None and settings.pulsar.staging_listen is not None
    url = urlsplit(settings.pulsar.staging_url)
    listen_host, _, listen_port = settings.pulsar.staging_listen.rpartition(":")
    assert url.hostname == "tesp-api"
    assert url.port == int(listen_port) and url.port in exposed("tesp-api")
    assert listen_host == "0.0.0.0"
    published = [int(container) for _, _, container in compose.host_ports(services()["tesp-api"])]
    assert url.port not in published
