"""SSRF through data URLs: an untrusted submitter must not make the service connect to its own
control plane (Pulsar, the broker, staging, the API itself) or to internal addresses.

Attacks go through the real API (in-process ASGI app, real SQLite store) for the create-time
check, and through the real TransferMux against real HTTP servers on 127.0.0.1 for the
transfer-time check (redirects, DNS rebinding). DNS answers are simulated by replacing
``tesp_api.transfer.egress.resolve`` -- the one function the guard uses to look names up --
because the machine's resolver (/etc/hosts, DNS) must not be changed by a test.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings, TransferSettings
from tesp_api.engine import Engine
from tesp_api.store.port import TaskRecord
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesFileType, TesState
from tesp_api.transfer import egress
from tesp_api.transfer.egress import EgressPolicy, Unresolvable
from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.mux import TransferMux
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.security.victim_server import VictimServer, victim_server
from tests.services.pulsar import LocalPulsar, pulsar_server

BASE = "/ga4gh/tes/v1"
PULSAR_PORT = 8913
API_PORT = 8080
PUBLIC_IP = "93.184.216.34"  # a globally routable address (never contacted: tests resolve to it only)


def settings_with(**transfer: Any) -> Settings:
    return Settings.model_validate(
        {
            "pulsar": {"url": f"http://127.0.0.1:{PULSAR_PORT}", "amqp_url": None},
            "api": {"host": "127.0.0.1", "port": API_PORT},
            "transfer": transfer,
        }
    )


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Make the guard's lookups answer from ``answers`` (unknown names: not found); returns the log."""
    asked: list[str] = []

    async def resolve(host: str, port: int, timeout: float) -> list[str]:
        asked.append(host)
        if host not in answers:
            raise Unresolvable(host)
        return answers[host]

    monkeypatch.setattr(egress, "resolve", resolve)
    return asked


@pytest.fixture
def settings() -> Settings:
    return settings_with()


@pytest.fixture
def app(settings: Settings, store: SqliteTaskStore) -> FastAPI:
    return create_app(settings, store)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


def task_with(*, input_url: str | None = None, output_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"executors": [{"image": "alpine", "command": ["true"]}]}
    if input_url is not None:
        body["inputs"] = [{"url": input_url, "path": "/data/in"}]
    if output_url is not None:
        body["outputs"] = [{"url": output_url, "path": "/data/out"}]
    return body


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"{BASE}/tasks", json=body)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"msg", "status_code"} and body["status_code"] == 400
    assert "refused" in body["msg"] or "bucket" in body["msg"], body["msg"]


FORBIDDEN_HTTP = [
    "http://127.0.0.1/x",
    "http://2130706433/x",  # decimal
    "http://0x7f000001/x",  # hex
    "http://0177.0.0.1/x",  # octal
    "http://127.1/x",  # short form
    "http://[::1]/x",
    "http://[::ffff:7f00:1]/x",  # IPv4-mapped, hex
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped, dotted
    "http://[::127.0.0.1]/x",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]/x",  # NAT64
    "http://0.0.0.0/x",  # unspecified (Linux connects it to loopback)
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fe80::1]/x",
    "http://10.1.2.3/x",
    "http://172.16.0.1/x",
    "http://192.168.1.1/x",
    "http://100.64.0.1/x",  # carrier-grade NAT
    "http://[fc00::1]/x",
    "http://[fd12:3456::1]/x",
    "http://224.0.0.1/x",  # multicast
    "http://[ff02::1]/x",
    "http://localhost/x",
    "http://LOCALHOST./x",
    "http://tes.localhost/x",  # RFC 6761: *.localhost is loopback
    "https://127.0.0.1:8443/x",
    "ftp://127.0.0.1/x",
    "ftp://user:pw@[::1]:2121/x",
]


@pytest.mark.parametrize("url", FORBIDDEN_HTTP)
async def test_an_input_url_at_a_forbidden_address_is_refused_at_create(
    client: httpx.AsyncClient, url: str
) -> None:
    assert_refused(await create(client, task_with(input_url=url)))


@pytest.mark.parametrize("url", FORBIDDEN_HTTP[:3] + FORBIDDEN_HTTP[11:13] + ["ftp://127.0.0.1/out"])
async def test_an_output_url_at_a_forbidden_address_is_refused_at_create(
    client: httpx.AsyncClient, url: str
) -> None:
    assert_refused(await create(client, task_with(output_url=url)))


async def test_a_name_in_etc_hosts_for_loopback_is_refused(client: httpx.AsyncClient) -> None:
    """This machine's own host name resolves through /etc/hosts (no DNS), usually to loopback."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"the host name {name!r} does not resolve here")
    if not any(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name!r} resolves to {addresses}, not loopback")
    assert_refused(await create(client, task_with(input_url=f"http://{name}/x")))


async def test_a_name_that_resolves_to_a_private_address_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"intranet.example.org": ["10.0.0.7"]})
    response = await create(client, task_with(output_url="https://intranet.example.org/upload"))
    assert_refused(response)
    assert "10.0.0.7" in response.json()["msg"]


async def test_one_forbidden_address_among_public_ones_is_enough_to_refuse(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.example.org": [PUBLIC_IP, "127.0.0.1"]})
    assert_refused(await create(client, task_with(input_url="http://mixed.example.org/x")))


async def test_a_public_name_is_accepted(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"data.example.org": [PUBLIC_IP]})
    response = await create(client, task_with(input_url="https://data.example.org/x?sig=abc"))
    assert response.status_code == 200, response.text


async def test_a_name_that_does_not_resolve_is_accepted_and_left_to_transfer_time(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documented decision: internal-only DNS on the Pulsar side is legitimate; the transfer checks again."""
    asked = fake_dns(monkeypatch, {})
    response = await create(client, task_with(input_url="http://only-inside.example.org/x"))
    assert response.status_code == 200, response.text
    assert asked == ["only-inside.example.org"]


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket@127.0.0.1:9000/key",
        "s3://127.0.0.1:9000/key",
        "s3://127.0.0.1/key",
        "s3://user:pw@bucket/key",
        "s3://bucket:9000/key",
    ],
)
async def test_an_s3_url_cannot_name_its_own_endpoint(client: httpx.AsyncClient, url: str) -> None:
    assert_refused(await create(client, task_with(input_url=url)))
    assert_refused(await create(client, task_with(output_url=url)))


class TestControlPlane:
    """allowed_hosts = all of loopback (what the tests need): the control plane stays closed."""

    @pytest.fixture
    def settings(self) -> Settings:
        return Settings.model_validate(
            {
                "pulsar": {
                    "servers": [
                        {"name": "rest", "url": f"http://127.0.0.1:{PULSAR_PORT}"},
                        {
                            "name": "mq",
                            "amqp_url": "amqp://guest:guest@127.0.0.1:5672//",
                            "staging_url": "http://127.0.0.1:8931",
                        },
                    ]
                },
                "api": {"host": "0.0.0.0", "port": API_PORT, "public_url": "https://127.0.0.3:8443"},
                "transfer": {
                    "allowed_hosts": ["127.0.0.0/8", "localhost"],
                    "denied_hosts": ["127.0.0.1:6379"],
                },
            }
        )

    @pytest.mark.parametrize(
        "url",
        [
            f"http://127.0.0.1:{PULSAR_PORT}/jobs/victim/files?name=x&type=output_workdir",
            f"http://2130706433:{PULSAR_PORT}/jobs/victim/cancel",
            f"http://[::ffff:127.0.0.1]:{PULSAR_PORT}/jobs/victim/cancel",
            f"http://localhost:{PULSAR_PORT}/jobs/victim/cancel",  # a name: found by its addresses
            "http://127.0.0.1:5672/",  # the broker
            "http://127.0.0.1:15672/api/exchanges",  # the broker's management port
            "http://127.0.0.1:8931/staging",  # AMQP staging
            f"http://127.0.0.1:{API_PORT}/ga4gh/tes/v1/tasks",  # this API (bound to 0.0.0.0)
            f"http://127.0.0.2:{API_PORT}/ga4gh/tes/v1/tasks",
            "https://127.0.0.3:8443/ga4gh/tes/v1/tasks",  # this API's public URL
            "http://127.0.0.1:6379/",  # transfer.denied_hosts
        ],
    )
    async def test_a_control_plane_endpoint_is_refused_even_when_allowed(
        self, client: httpx.AsyncClient, url: str
    ) -> None:
        response = await create(client, task_with(output_url=url))
        assert_refused(response)
        assert "control plane" in response.json()["msg"]

    async def test_another_port_of_an_allowed_host_is_accepted(self, client: httpx.AsyncClient) -> None:
        response = await create(client, task_with(input_url="http://127.0.0.1:9999/data.txt"))
        assert response.status_code == 200, response.text


async def test_by_default_the_pulsar_port_is_refused_like_any_loopback_port(
    client: httpx.AsyncClient,
) -> None:
    """No port scan: the answer does not tell the control plane apart from other loopback ports."""
    pulsar = (await create(client, task_with(input_url=f"http://127.0.0.1:{PULSAR_PORT}/jobs"))).json()
    other = (await create(client, task_with(input_url=f"http://127.0.0.1:{PULSAR_PORT + 1}/jobs"))).json()
    assert pulsar["msg"].replace(str(PULSAR_PORT), "N") == other["msg"].replace(str(PULSAR_PORT + 1), "N")
    assert "control plane" not in pulsar["msg"]


@pytest.mark.parametrize(
    ("allowed", "url", "accepted"),
    [
        (["127.0.0.1:9000"], "http://127.0.0.1:9000/k", True),
        (["127.0.0.1:9000"], "http://127.0.0.1:9001/k", False),
        (["10.0.0.0/8"], "http://10.20.30.40/k", True),
        (["10.0.0.0/8"], "http://192.168.0.1/k", False),
        (["[::1]:9000"], "http://[::1]:9000/k", True),
        (["fd00::/8"], "http://[fd00::5]/k", True),
    ],
)
async def test_allowed_hosts_re_allows_exactly_what_it_names(
    store: SqliteTaskStore, allowed: list[str], url: str, accepted: bool
) -> None:
    app = create_app(settings_with(allowed_hosts=allowed), store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tes.test"
    ) as client:
        response = await create(client, task_with(input_url=url))
    assert (response.status_code == 200) is accepted, response.text


async def test_an_allowed_host_name_re_allows_its_internal_addresses(
    store: SqliteTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's internal MinIO or data server, by name."""
    fake_dns(monkeypatch, {"minio.internal": ["10.0.0.5"]})
    for allowed, status in (([], 400), (["minio.internal"], 200)):
        app = create_app(settings_with(allowed_hosts=allowed), store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
            response = await create(c, task_with(input_url="http://minio.internal:9000/bucket/key"))
        assert response.status_code == status, response.text


def test_a_malformed_allowed_hosts_entry_stops_the_start() -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        TransferSettings.model_validate({"allowed_hosts": ["http://minio:9000/"]})


# --- transfer time: every connection and every redirect hop is checked again ------------------


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[VictimServer]:
    (tmp_path / "victim").mkdir()
    with victim_server(tmp_path / "victim") as server:
        yield server


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[VictimServer]:
    (tmp_path / "attacker").mkdir()
    with victim_server(tmp_path / "attacker") as server:
        yield server


def mux_for(*, allowed: list[str], control_plane: list[str] | None = None) -> TransferMux:
    transfer = TransferSettings.model_validate({"allowed_hosts": allowed, "retries": 0, "timeout": 5.0})
    return TransferMux(transfer, egress=EgressPolicy(transfer, control_plane or []))


async def test_a_redirect_to_a_forbidden_address_fails_and_nothing_reaches_it(
    attacker: VictimServer, victim: VictimServer, tmp_path: Path
) -> None:
    mux = mux_for(allowed=[f"127.0.0.1:{attacker.port}"])
    try:
        with pytest.raises(TransferError) as caught:
            await mux.download(attacker.redirect_to(f"{victim.url}/secret?sig=s3cr3t"), tmp_path / "in")
    finally:
        await mux.aclose()
    message = str(caught.value)
    assert "redirect" in message and "SSRF" in message and "s3cr3t" not in message
    assert not caught.value.retryable
    assert victim.hits() == []
    assert not (tmp_path / "in").exists()


async def test_a_redirect_to_the_pulsar_port_fails_even_with_loopback_allowed(
    attacker: VictimServer, victim: VictimServer, tmp_path: Path
) -> None:
    """The victim plays Pulsar: its port is in the control plane."""
    mux = mux_for(allowed=["127.0.0.1"], control_plane=[f"127.0.0.1:{victim.port}"])
    try:
        with pytest.raises(TransferError, match="control plane"):
            await mux.download(attacker.redirect_to(f"{victim.url}/jobs/victim/files"), tmp_path / "in")
    finally:
        await mux.aclose()
    assert victim.hits() == []


async def test_a_redirect_between_allowed_servers_still_works(
    attacker: VictimServer, victim: VictimServer, tmp_path: Path
) -> None:
    mux = mux_for(allowed=["127.0.0.1"])
    try:
        await mux.download(attacker.redirect_to(f"{victim.url}/data.txt"), tmp_path / "in")
    finally:
        await mux.aclose()
    assert (tmp_path / "in").read_bytes() == b"victim data\n"
    assert victim.hits() == ["GET /data.txt"]


async def test_dns_rebinding_between_create_and_transfer_is_caught_at_connect(
    client: httpx.AsyncClient, victim: VictimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is public when the task is created, and loopback when the engine connects."""
    url = f"http://rebind.example.org:{victim.port}/x"
    fake_dns(monkeypatch, {"rebind.example.org": [PUBLIC_IP]})
    assert (await create(client, task_with(input_url=url, output_url=url))).status_code == 200

    fake_dns(monkeypatch, {"rebind.example.org": ["127.0.0.1"]})
    mux = mux_for(allowed=[])
    (tmp_path / "out").write_text("exfiltrated")
    try:
        with pytest.raises(TransferError, match="SSRF guard"):
            await mux.download(url, tmp_path / "in")
        with pytest.raises(TransferError, match="SSRF guard"):
            await mux.upload(tmp_path / "out", url, TesFileType.FILE)
    finally:
        await mux.aclose()
    assert victim.hits() == []


async def test_the_connection_goes_to_the_checked_address_not_to_a_second_lookup(
    victim: VictimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver that answers differently on each lookup cannot slip a loopback address in later."""
    answers = iter([["127.0.0.1"], ["10.9.9.9"]])

    async def flipping(host: str, port: int, timeout: float) -> list[str]:
        return next(answers)

    monkeypatch.setattr(egress, "resolve", flipping)
    mux = mux_for(allowed=["127.0.0.1"])
    try:
        await mux.download(f"http://flip.example.org:{victim.port}/a", tmp_path / "in")
    finally:
        await mux.aclose()
    assert victim.hits() == ["GET /a"]  # one lookup, one connection, to the address that was checked


async def test_an_ftp_host_that_rebinds_to_loopback_is_refused_before_connecting(
    victim: VictimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"ftp.example.org": ["127.0.0.1"]})
    mux = mux_for(allowed=[])
    try:
        with pytest.raises(TransferError, match="SSRF guard"):
            await mux.download(f"ftp://ftp.example.org:{victim.port}/x", tmp_path / "in")
    finally:
        await mux.aclose()
    assert victim.hits() == []


# --- the whole path: a task through the engine and a real Pulsar ----------------------------------


@pytest.fixture(scope="module")
def pulsar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPulsar]:
    with pulsar_server(tmp_path_factory.mktemp("pulsar")) as server:
        yield server


async def run_task(settings: Settings, store: SqliteTaskStore, task: dict[str, Any]) -> TaskRecord:
    task_id = await submit(store, task)
    engine = Engine(settings, store)
    await engine.start()
    try:
        return await wait_for(store, task_id)
    finally:
        await engine.stop()


def pulsar_settings(pulsar: LocalPulsar, tmp_path: Path, allowed: list[str]) -> Settings:
    settings = engine_settings(pulsar.url, tmp_path)
    transfer = settings.transfer.model_copy(update={"allowed_hosts": allowed, "retries": 0})
    return settings.model_copy(update={"transfer": transfer})


async def test_a_task_whose_input_redirects_to_a_forbidden_address_fails_and_the_victim_sees_nothing(
    pulsar: LocalPulsar, store: SqliteTaskStore, attacker: VictimServer, victim: VictimServer, tmp_path: Path
) -> None:
    settings = pulsar_settings(pulsar, tmp_path, [f"127.0.0.1:{attacker.port}"])
    record = await run_task(
        settings,
        store,
        {
            "executors": [{"image": "alpine", "command": ["true"]}],
            "inputs": [{"url": attacker.redirect_to(f"{victim.url}/jobs/x/files"), "path": "/data/in"}],
        },
    )
    assert record.state == TesState.SYSTEM_ERROR
    assert any("SSRF guard" in line for line in record.log.system_logs or []), record.log.system_logs
    assert victim.hits() == []


async def test_a_task_whose_output_is_the_pulsar_port_fails_even_with_loopback_allowed(
    pulsar: LocalPulsar, store: SqliteTaskStore, attacker: VictimServer, tmp_path: Path
) -> None:
    """The engine's policy knows Pulsar's address from the settings: a redirect there is refused."""
    settings = pulsar_settings(pulsar, tmp_path, ["127.0.0.1"])
    record = await run_task(
        settings,
        store,
        {
            "executors": [{"image": "alpine", "command": ["true"]}],
            "inputs": [{"url": attacker.redirect_to(f"{pulsar.url}/jobs/x/status"), "path": "/data/in"}],
        },
    )
    assert record.state == TesState.SYSTEM_ERROR
    assert any("control plane" in line for line in record.log.system_logs or []), record.log.system_logs
    assert attacker.hits() == []  # the redirector answered; nothing else was fetched from it
