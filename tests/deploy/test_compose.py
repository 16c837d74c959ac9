"""docker-compose.yaml and docker/dts/docker-compose.yaml: valid, safe by default, complete.

Nothing here builds an image or starts a container: `docker build` cannot pull base images on
these machines (no registry is reachable; docs/deploy.md). The files are validated by Debian's
docker-compose 1.29 (`config`, schema and interpolation; it reads `profiles` but its `config
--services` ignores them), also against a private dockerd (tests/services/docker_daemon.py) reached
only through DOCKER_HOST, and, for what v1 does not check, by reading them as Compose v2 does
(tests/deploy/compose.py). Compose v2 (`docker compose`) is not packaged in Debian 12, so it is not
run here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy import compose
from tests.deploy.conftest import DTS_ENV, MAIN_ENV
from tests.services.docker_daemon import DockerDaemon

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|ACCESS_KEY|_PASS$")
# Every profile of docker-compose.yaml alone, none, and all together.
PROFILES = [(), ("pulsar",), ("amqp",), ("pulsar", "amqp")]


def run_v1(
    binary: str, path: Path, env: dict[str, str], *args: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # a developer's own .env must not change the result
    empty_env_file.write_text("")
    # No DOCKER_HOST unless the caller gives one: never the machine's /var/run/docker.sock.
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        **env,
    }
    return subprocess.run(
        [binary, "--env-file", str(empty_env_file), "-f", str(path), *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )


# v1 reads `profiles` but does not filter by them: the resolved file has at least the profile's services.
@pytest.mark.parametrize("profiles", PROFILES, ids=str)
def test_docker_compose_v1_accepts_the_main_file_with_each_profile(
    docker_compose_v1: str, tmp_path: Path, profiles: tuple[str, ...]
) -> None:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = run_v1(docker_compose_v1, compose.MAIN_FILE, MAIN_ENV, *flags, "config", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= compose.active_services(compose.raw(compose.MAIN_FILE), profiles)


@pytest.mark.parametrize("profiles", PROFILES, ids=str)
def test_docker_compose_v1_works_with_every_profile_against_a_private_dockerd(
    docker_compose_v1: str, docker_daemon: DockerDaemon, tmp_path: Path, profiles: tuple[str, ...]
) -> None:
    """`config` and `ps` (which asks the daemon for the project's containers) with DOCKER_HOST on
    the private daemon's socket: v1's client speaks this dockerd's API, and nothing is started."""
    env = {**MAIN_ENV, **docker_daemon.env}
    flags = [arg for p in profiles for arg in ("--profile", p)]
    for command in (["config", "-q"], ["ps", "-q"]):
        result = run_v1(docker_compose_v1, compose.MAIN_FILE, env, *flags, *command, tmp_path=tmp_path)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert result.stdout.strip() == "", command  # valid, and no container of this project exists
    dts = run_v1(
        docker_compose_v1,
        compose.DTS_FILE,
        {**DTS_ENV, **docker_daemon.env},
        "config",
        "-q",
        tmp_path=tmp_path,
    )
    assert dts.returncode == 0, dts.stderr


def test_docker_compose_v1_accepts_the_data_transfer_stack(docker_compose_v1: str, tmp_path: Path) -> None:
    result = run_v1(docker_compose_v1, compose.DTS_FILE, DTS_ENV, "config", "-q", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


def test_docker_compose_v1_stops_with_a_message_when_the_mongodb_password_is_not_set(
    docker_compose_v1: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in MAIN_ENV.items() if k != "MONGO_INITDB_ROOT_PASSWORD"}
    result = run_v1(docker_compose_v1, compose.MAIN_FILE, env, "config", "-q", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "set MONGO_INITDB_ROOT_PASSWORD in .env" in result.stderr


@pytest.mark.parametrize("missing", sorted(MAIN_ENV))
def test_compose_stops_with_a_message_when_a_secret_is_not_set(missing: str) -> None:
    env = {k: v for k, v in MAIN_ENV.items() if k != missing}
    with pytest.raises(compose.MissingVariable, match=f"set {missing} in .env"):
        compose.load(compose.MAIN_FILE, env)


@pytest.mark.parametrize("missing", sorted(DTS_ENV))
def test_the_data_transfer_stack_stops_with_a_message_when_a_secret_is_not_set(missing: str) -> None:
    env = {k: v for k, v in DTS_ENV.items() if k != missing}
    with pytest.raises(compose.MissingVariable, match=f"set {missing} in docker/dts/.env"):
        compose.load(compose.DTS_FILE, env)


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        ((), {"tesp-api", "tesp-db"}),
        (("pulsar",), {"tesp-api", "tesp-db", "pulsar_rest"}),
        (("amqp",), {"tesp-api", "tesp-db", "rabbitmq", "pulsar_amqp"}),
    ],
    ids=str,
)
def test_each_profile_adds_its_services(profiles: tuple[str, ...], expected: set[str]) -> None:
    assert compose.active_services(compose.raw(compose.MAIN_FILE), profiles) == expected


def test_the_service_names_of_tesp_api_0_2_are_kept() -> None:
    assert {"tesp-api", "tesp-db", "pulsar_rest"} <= set(compose.raw(compose.MAIN_FILE)["services"])


def test_no_always_started_service_depends_on_a_profile_service() -> None:
    """Compose v2 refuses `up` when a started service depends on one whose profile is off."""
    services = compose.raw(compose.MAIN_FILE)["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            if not service.get("profiles"):
                assert not services[dependency].get("profiles"), f"{name} depends on {dependency}"
            else:
                assert set(services[dependency].get("profiles") or service["profiles"]) & set(
                    service["profiles"]
                )


def test_tesp_api_and_mongodb_have_healthchecks_and_named_volumes() -> None:
    data = compose.raw(compose.MAIN_FILE)
    for name in ("tesp-api", "tesp-db"):
        service = data["services"][name]
        assert service["healthcheck"]["test"], name
        named = [v.split(":")[0] for v in service["volumes"] if isinstance(v, str)]
        assert named and all(volume in data["volumes"] for volume in named), name
    assert data["services"]["tesp-api"]["depends_on"]["tesp-db"]["condition"] == "service_healthy"


def test_mongodb_is_not_published_on_the_host_and_requires_credentials() -> None:
    db = compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]["tesp-db"]
    assert "ports" not in db
    env = compose.environment(db)
    assert env["MONGO_INITDB_ROOT_PASSWORD"] == MAIN_ENV["MONGO_INITDB_ROOT_PASSWORD"]


def test_only_tesp_api_publishes_a_port_and_by_default_on_localhost_8080() -> None:
    services = compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]
    published = {name: compose.host_ports(s) for name, s in services.items() if s.get("ports")}
    assert published == {"tesp-api": [("127.0.0.1", "8080", "8080")]}


def test_the_bind_address_and_port_of_tesp_api_can_be_changed() -> None:
    env = {**MAIN_ENV, "TESP_API_BIND": "0.0.0.0", "TESP_API_PORT": "9090"}
    service = compose.load(compose.MAIN_FILE, env)["services"]["tesp-api"]
    assert compose.host_ports(service) == [("0.0.0.0", "9090", "8080")]


def test_no_secret_has_a_default_value_in_a_compose_file() -> None:
    for path in (compose.MAIN_FILE, compose.DTS_FILE):
        for name, op, arg in compose.variables(path):
            if SECRET_NAME.search(name) and op in (":-", "-"):
                assert arg == "", f"{path.name}: {name} has the default {arg!r}"


def test_no_container_is_privileged_or_on_the_host_network() -> None:
    for path, env in ((compose.MAIN_FILE, MAIN_ENV), (compose.DTS_FILE, DTS_ENV)):
        for name, service in compose.load(path, env)["services"].items():
            assert not service.get("privileged"), name
            assert service.get("network_mode") != "host", name
            assert service.get("pid") != "host", name


def test_every_image_is_pinned_to_a_tag_other_than_latest() -> None:
    for path, env in ((compose.MAIN_FILE, MAIN_ENV), (compose.DTS_FILE, DTS_ENV)):
        for name, service in compose.load(path, env)["services"].items():
            image = service["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: {image}"


def test_every_build_context_and_dockerfile_exists() -> None:
    for path, env in ((compose.MAIN_FILE, MAIN_ENV), (compose.DTS_FILE, DTS_ENV)):
        for name, service in compose.load(path, env)["services"].items():
            build = service.get("build")
            if not build:
                continue
            context = (path.parent / build["context"]).resolve()
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


def test_every_relative_bind_mount_source_exists() -> None:
    for path, env in ((compose.MAIN_FILE, MAIN_ENV), (compose.DTS_FILE, DTS_ENV)):
        for name, service in compose.load(path, env)["services"].items():
            for volume in service.get("volumes") or []:
                source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
                if source.startswith("."):
                    assert (path.parent / source).exists(), f"{name}: {source}"


def test_pulsar_job_directory_is_mounted_at_the_same_path_as_on_the_host() -> None:
    """docker -v paths in the command lines are resolved by the host's daemon (docs/deploy.md)."""
    env = {**MAIN_ENV, "PULSAR_STAGING_DIR": "/srv/tesp/jobs"}
    services = compose.load(compose.MAIN_FILE, env)["services"]
    for name in ("pulsar_rest", "pulsar_amqp"):
        service = services[name]
        staging = compose.environment(service)["PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY"]
        assert staging == "/srv/tesp/jobs"
        binds = {(v["source"], v["target"]) for v in service["volumes"] if isinstance(v, dict)}
        assert (staging, staging) in binds, name
        assert ("/var/run/docker.sock", "/var/run/docker.sock") in binds, name


def test_the_rest_pulsar_gets_the_same_private_token_as_tesp_api() -> None:
    services = compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]
    api_token = compose.environment(services["tesp-api"])["TESP_API_PULSAR__PRIVATE_TOKEN"]
    pulsar_token = compose.environment(services["pulsar_rest"])["PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN"]
    assert api_token == pulsar_token == MAIN_ENV["PULSAR_PRIVATE_TOKEN"]


def test_the_network_mtu_is_configurable() -> None:
    network = compose.load(compose.MAIN_FILE, {**MAIN_ENV, "DOCKER_NETWORK_MTU": "1450"})["networks"][
        "default"
    ]
    assert network["driver_opts"]["com.docker.network.driver.mtu"] == "1450"


def test_the_data_transfer_stack_joins_the_main_stack_network() -> None:
    main = compose.load(compose.MAIN_FILE, MAIN_ENV)["networks"]["default"]
    dts = compose.load(compose.DTS_FILE, DTS_ENV)["networks"]["default"]
    assert dts["external"] is True
    assert dts["name"] == main["name"]


def test_the_data_transfer_stack_publishes_on_localhost_only() -> None:
    for name, service in compose.load(compose.DTS_FILE, DTS_ENV)["services"].items():
        for address, _, _ in compose.host_ports(service):
            assert address == "127.0.0.1", name


def test_the_env_examples_list_every_required_variable_without_a_value() -> None:
    for path, example in (
        (compose.MAIN_FILE, compose.REPO / "docker" / "env.example"),
        (compose.DTS_FILE, compose.REPO / "docker" / "dts" / "env.example"),
    ):
        lines = dict(
            line.split("=", 1)
            for line in example.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        required = {name for name, op, _ in compose.variables(path) if op in (":?", "?")}
        assert required <= set(lines), example
        for name in required:
            if SECRET_NAME.search(name):
                assert lines[name] == "", f"{example}: {name} has a value"


def test_rabbitmq_refuses_to_start_without_a_password() -> None:
    """The rabbitmq service's entrypoint guard, run by a real shell (the image is not here)."""
    service = compose.load(compose.MAIN_FILE, MAIN_ENV)["services"]["rabbitmq"]
    assert compose.environment(service)["RABBITMQ_DEFAULT_PASS"] == ""
    argv = service["entrypoint"]
    result = subprocess.run(
        argv,
        env={"PATH": "/usr/bin:/bin", "RABBITMQ_DEFAULT_PASS": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert "set RABBITMQ_PASSWORD in .env" in result.stderr
    assert argv[-1].endswith("exec docker-entrypoint.sh rabbitmq-server")


def test_every_compose_variable_is_documented_in_deploy_md() -> None:
    docs = (compose.REPO / "docs" / "deploy.md").read_text()
    for path in (compose.MAIN_FILE, compose.DTS_FILE):
        for name, _, _ in compose.variables(path):
            assert f"`{name}`" in docs, f"{path.name}: {name} is not in docs/deploy.md"
