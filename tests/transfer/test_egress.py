"""The SSRF policy's building blocks (tesp_api/transfer/egress.py), one rule each.

The attacks through the API and real servers are in tests/security/test_ssrf.py; these pin the
parsing the guard relies on, which must read addresses exactly as the C library does.
"""

from __future__ import annotations

import ipaddress

import pytest

from tesp_api.config.settings import Settings, TransferSettings
from tesp_api.transfer import egress
from tesp_api.transfer.egress import (
    EgressDenied,
    EgressPolicy,
    HostRule,
    control_plane_of,
    embedded_ipv4,
    forbidden_reason,
    parse_ip_literal,
    parse_rule,
)
from tesp_api.transfer.ftp import GuardedFtpClient

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "127.0.0.1."]
)
def test_every_spelling_of_an_ipv4_literal_is_read_as_the_c_library_reads_it(host: str) -> None:
    assert parse_ip_literal(host) == LOOPBACK


@pytest.mark.parametrize("host", ["[::1]", "::1", "[::ffff:7f00:1]", "[fe80::1%eth0]"])
def test_ipv6_literals_are_read_with_or_without_brackets(host: str) -> None:
    assert parse_ip_literal(host) is not None


@pytest.mark.parametrize("host", ["example.org", "deadbeef", "cafe.de", "1x2", ""])
def test_names_are_not_ip_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),
    ],
)
def test_the_ipv4_inside_ipv6_forms_is_found(address: str, inner: str) -> None:
    assert embedded_ipv4(ipaddress.ip_address(address)) == ipaddress.IPv4Address(inner)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "0.0.0.0",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1"])
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("minio.internal", HostRule(name="minio.internal")),
        ("MinIO.Internal:9000", HostRule(name="minio.internal", port=9000)),
        ("127.0.0.1", HostRule(network=ipaddress.ip_network("127.0.0.1/32"))),
        ("127.0.0.1:9000", HostRule(network=ipaddress.ip_network("127.0.0.1/32"), port=9000)),
        ("[::1]:9000", HostRule(network=ipaddress.ip_network("::1/128"), port=9000)),
        ("10.0.0.0/8", HostRule(network=ipaddress.ip_network("10.0.0.0/8"))),
        ("0.0.0.0:8080", HostRule(port=8080, this_machine=True)),
    ],
)
def test_host_entries_are_names_addresses_or_networks_with_an_optional_port(
    entry: str, rule: HostRule
) -> None:
    assert parse_rule(entry) == rule


@pytest.mark.parametrize("entry", ["", "http://minio/", "host:99999", "a b", "10.0.0.0/33"])
def test_a_malformed_host_entry_is_an_error(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(entry)


def test_the_control_plane_holds_every_service_endpoint_from_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "api": {"host": "0.0.0.0", "port": 8080, "public_url": "https://tes.example.org"},
            "pulsar": {
                "servers": [
                    {"name": "a", "url": "http://pulsar.internal:8913"},
                    {
                        "name": "b",
                        "amqp_url": "amqps://u:p@mq.internal//",
                        "staging_listen": "0.0.0.0:8091",
                        "staging_url": "http://tesp.internal:8091",
                    },
                ]
            },
        }
    )
    assert set(control_plane_of(settings)) == {
        "pulsar.internal:8913",
        "mq.internal:5671",
        "mq.internal:15672",
        "mq.internal:15671",
        "0.0.0.0:8091",
        "tesp.internal:8091",
        "0.0.0.0:8080",
        "tes.example.org:443",
    }
    assert all(parse_rule(entry) for entry in control_plane_of(settings))


async def test_a_connection_is_made_only_to_checked_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(host: str, port: int, timeout: float) -> list[str]:
        return {"public.example.org": ["93.184.216.34"], "inside.example.org": ["10.0.0.1"]}[host]

    monkeypatch.setattr(egress, "resolve", resolve)
    policy = EgressPolicy(TransferSettings())
    assert await policy.checked_addresses("public.example.org", 443) == ["93.184.216.34"]
    with pytest.raises(EgressDenied, match="10.0.0.1"):
        await policy.checked_addresses("inside.example.org", 443)


async def test_an_ftp_data_connection_to_another_address_than_the_checked_one_is_refused() -> None:
    """A PASV answer naming another host (FTP bounce) never gets a connection."""
    client = GuardedFtpClient(EgressPolicy(TransferSettings()))
    with pytest.raises(EgressDenied):
        await client._open_connection("127.0.0.1", 8913)


def test_an_odd_host_name_in_a_service_url_is_still_denied_not_a_crash() -> None:
    policy = EgressPolicy(TransferSettings(), ["pülsar:8913"])
    assert "control plane" in (policy.static_reason("pülsar", 8913) or "")
