"""Where data transfers may connect: the guard against server-side request forgery (SSRF).

Task submitters are untrusted, and every input/output URL makes *this service* open a connection.
Without a guard a URL such as ``http://127.0.0.1:8913/jobs/<victim>/cancel`` reaches Pulsar, the
broker's management port, tesp-api itself or a cloud metadata service (169.254.169.254) with the
service's own network position. The policy, checked at create (400) and again for every
connection at transfer time (DNS may change in between: "rebinding"):

1. An address (or host name) of the service's own control plane -- each Pulsar server's url and
   amqp_url (plus the broker's management ports 15672/15671), staging urls, tesp-api's api.host:port
   and public_url, and ``transfer.denied_hosts`` -- is always refused, even when allowed_hosts
   covers it.
2. ``transfer.allowed_hosts`` (exact host names, ``host:port``, IPs or CIDRs) re-allows what it names.
3. Every other address a host resolves to must be globally routable: loopback, link-local,
   private, unique-local, unspecified, multicast, reserved and the IPv4 embedded in IPv6
   (``::ffff:127.0.0.1``, ``::127.0.0.1``, 6to4, NAT64, Teredo) are refused. One bad address is
   enough to refuse the host.

IP literals are read the way the C library reads them (``2130706433``, ``0x7f000001``,
``0177.0.0.1``, ``127.1``), and names ending in ``.localhost`` count as loopback (RFC 6761) without
a lookup. Name resolution goes through :data:`resolve` (getaddrinfo in its own lookup threads, with a timeout): the
one seam tests replace to simulate DNS answers, because the machine's resolver must not be changed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tesp_api.config.settings import TransferSettings

# Re-exported (``X as X``): the parser is a leaf the settings import (host_rules.py's docstring).
from tesp_api.transfer.host_rules import Address as Address
from tesp_api.transfer.host_rules import HostRule as HostRule
from tesp_api.transfer.host_rules import Network as Network
from tesp_api.transfer.host_rules import embedded_ipv4 as embedded_ipv4
from tesp_api.transfer.host_rules import parse_ip_literal as parse_ip_literal
from tesp_api.transfer.host_rules import parse_rule as parse_rule
from tesp_api.transfer.host_rules import strip_brackets

if TYPE_CHECKING:
    from tesp_api.config.settings import Settings

Resolver = Callable[[str, int, float], Awaitable[list[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}
BROKER_MANAGEMENT_PORTS = (15672, 15671)
_LOCALHOST_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_CONTROL_PLANE_CACHE_SECONDS = 60.0


class EgressDenied(Exception):
    """A connection the policy refuses; ``reason`` names the host, never a URL's secret parts."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Unresolvable(Exception):
    """The host name did not resolve (or not in time)."""


# Lookups run in their own few threads: a stalled resolver (a lookup cannot be cancelled once it
# runs) then delays only other lookups, never staging, S3 transfers or password checks.
_LOOKUP_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tesp-dns")


async def system_resolve(host: str, port: int, timeout: float) -> list[str]:
    """Every address ``host`` resolves to, via the C library's getaddrinfo in a lookup thread."""
    loop = asyncio.get_running_loop()
    lookup = functools.partial(
        socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    try:
        infos = await asyncio.wait_for(loop.run_in_executor(_LOOKUP_THREADS, lookup), timeout)
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise Unresolvable(host) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The seam: tests assign a fake here (monkeypatch) to play a DNS server; looked up at each call.
resolve: Resolver = system_resolve


def is_localhost_name(host: str) -> bool:
    name = strip_brackets(host).rstrip(".")
    return name in _LOCALHOST_NAMES or name.endswith(".localhost")


def forbidden_reason(ip: Address) -> str | None:
    """Why a transfer must not connect to ``ip`` (None: a globally routable address)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = forbidden_reason(inner)
        return f"{reason} (IPv4 inside IPv6)" if reason else None
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"), "unique-local"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, reason in checks:
        if hit:
            return f"a {reason} address"
    return None


def _control_rule(entry: str) -> HostRule:
    """A denylist rule; an odd host name from a service URL is kept as a plain name, never dropped."""
    try:
        return parse_rule(entry)
    except ValueError:
        host, _, port = entry.rpartition(":")
        return (
            HostRule(name=host.strip("[]").lower(), port=int(port))
            if port.isdigit()
            else HostRule(name=entry.lower())
        )


def allowed_hosts_hint(reason: str) -> str:
    """The pointer to the setting that could re-allow a refusal (none for the control plane)."""
    return "" if "control plane" in reason else " (an operator can allow it: transfer.allowed_hosts)"


def _endpoint_of_url(url: str | None) -> list[str]:
    """``host:port`` entries for a configured service URL (nothing for an empty or odd one)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return []
    host = parts.hostname
    if not host or port is None:
        return []
    shown = f"[{host}]" if ":" in host else host
    entries = [f"{shown}:{port}"]
    if parts.scheme.lower() in ("amqp", "amqps", "pyamqp"):
        entries += [f"{shown}:{p}" for p in BROKER_MANAGEMENT_PORTS]
    return entries


def _endpoint_of_listen(listen: str | None) -> list[str]:
    """``host:port`` of a staging_listen value ("host:port" or ":port")."""
    if not listen or ":" not in listen:
        return []
    host, _, port = listen.rpartition(":")
    return [f"{host or '0.0.0.0'}:{port}"]  # noqa: S104 - naming a listen address to refuse it if port.isdigit() and port != "0" else []


def control_plane_of(settings: Settings) -> list[str]:
    """Every endpoint of the service's own control plane, as ``host:port`` rules (see module doc)."""
    entries: list[str] = []
    for server in settings.pulsar.effective_servers():
        entries += _endpoint_of_url(server.url)
        if server.amqp_url is not None:
            entries += _endpoint_of_url(server.amqp_url.get_secret_value())
        entries += _endpoint_of_url(server.staging_url)
        entries += _endpoint_of_listen(server.staging_listen)
    if settings.api.port:
        host = settings.api.host or "0.0.0.0"  # noqa: S104 - naming a listen address to refuse it
        entries.append(f"[{host}]:{settings.api.port}" if ":" in host else f"{host}:{settings.api.port}")
    entries += _endpoint_of_url(settings.api.public_url)
    return list(dict.fromkeys(entries))


class EgressPolicy:
    """Answers "may a transfer connect to host:port?" (see the module doc for the rules)."""

    def __init__(self, settings: TransferSettings, control_plane: Sequence[str] = ()) -> None:
        self.timeout = settings.resolve_timeout
        self._allowed = [parse_rule(e) for e in settings.allowed_hosts]
        self._denied = [_control_rule(e) for e in [*control_plane, *settings.denied_hosts]]
        self._denied_addresses: tuple[float, list[tuple[HostRule, list[Address]]], list[Address]] | None = (
            None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        """The policy with the control plane of the whole configuration (what the service uses)."""
        return cls(settings.transfer, control_plane_of(settings))

    async def _resolve(self, host: str, port: int) -> list[Address]:
        literal = parse_ip_literal(host)
        if literal is not None:
            return [literal]
        found = await resolve(host, port, self.timeout)
        return [a for a in (parse_ip_literal(x) for x in found) if a is not None]

    async def _denied_resolved(self) -> tuple[list[tuple[HostRule, list[Address]]], list[Address]]:
        """Denied rules named by host name, with their current addresses; and this machine's addresses."""
        now = time.monotonic()
        if self._denied_addresses is None or now - self._denied_addresses[0] > _CONTROL_PLANE_CACHE_SECONDS:
            named: list[tuple[HostRule, list[Address]]] = []
            for rule in self._denied:
                if rule.name is not None:
                    try:
                        named.append((rule, await self._resolve(rule.name, rule.port or 0)))
                    except Unresolvable:
                        named.append((rule, []))
            local: list[Address] = []
            if any(rule.this_machine for rule in self._denied):
                try:
                    local = await self._resolve(socket.gethostname(), 0)
                except Unresolvable:
                    local = []
            self._denied_addresses = (now, named, local)
        return self._denied_addresses[1], self._denied_addresses[2]

    def _range_reason(self, shown: str, name: str, port: int, addresses: list[Address]) -> str | None:
        """Rules 2 and 3: None when allowed_hosts names it or every address is globally routable."""
        if any(rule.matches_name(name, port) for rule in self._allowed):
            return None
        literal = parse_ip_literal(name) is not None
        for ip in addresses:
            if any(rule.matches_address(ip, port) for rule in self._allowed):
                continue
            reason = forbidden_reason(ip)
            if reason:
                return f"{shown} is {reason}" if literal else f"{shown} resolves to {reason} ({ip})"
        return None

    @staticmethod
    def _control_plane_reason(shown: str, port: int) -> str:
        return f"{shown} port {port} is an endpoint of this service's control plane"

    def static_reason(self, host: str, port: int) -> str | None:
        """The refusal that needs no lookup (IP literals, localhost names, denied names), or None.

        The address-range reason is reported before the control-plane one, so that with the
        default settings a refused Pulsar port reads like any other loopback port (no port scan).
        """
        name = strip_brackets(host).rstrip(".")
        literal = parse_ip_literal(name)
        if literal is not None:
            reason = self._range_reason(host, name, port, [literal])
        elif is_localhost_name(name) and not any(rule.matches_name(name, port) for rule in self._allowed):
            loopback = ipaddress.IPv4Address("127.0.0.1")
            allowed = any(rule.matches_address(loopback, port) for rule in self._allowed)
            reason = None if allowed else f"{host} is a loopback name"
        else:
            reason = None
        if reason:
            return reason
        if any(rule.matches_name(name, port) for rule in self._denied) or (
            literal is not None and any(rule.matches_address(literal, port) for rule in self._denied)
        ):
            return self._control_plane_reason(host, port)
        return None

    def _address_reason(
        self,
        host: str,
        port: int,
        addresses: list[Address],
        named: list[tuple[HostRule, list[Address]]],
        local: list[Address],
    ) -> str | None:
        name = strip_brackets(host).rstrip(".")
        reason = self._range_reason(host, name, port, addresses)
        if reason:
            return reason
        for ip in addresses:
            if any(rule.matches_address(ip, port, local) for rule in self._denied) or any(
                rule.port in (None, port) and ip in rule_addresses for rule, rule_addresses in named
            ):
                return self._control_plane_reason(host, port)
        return None

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host:port``, all allowed; raises EgressDenied or Unresolvable.

        Callers connect to one of these literal addresses, never to ``host`` again: a second lookup
        could answer differently (DNS rebinding).
        """
        reason = self.static_reason(host, port)
        if reason:
            raise EgressDenied(reason)
        addresses = await self._resolve(host, port)
        if not addresses:
            raise Unresolvable(host)
        named, local = await self._denied_resolved()
        reason = self._address_reason(host, port, addresses, named, local)
        if reason:
            raise EgressDenied(reason)
        return [str(a) for a in addresses]

    async def check_port_on(self, ip: str, port: int) -> None:
        """A second connection to an already checked address (FTP data): only the denylist applies."""
        address = ipaddress.ip_address(ip)
        named, local = await self._denied_resolved()
        for rule in self._denied:
            if rule.matches_address(address, port, local):
                raise EgressDenied(f"{ip} port {port} is an endpoint of this service's control plane")
        for rule, rule_addresses in named:
            if rule.port in (None, port) and address in rule_addresses:
                raise EgressDenied(f"{ip} port {port} is an endpoint of this service's control plane")

    @staticmethod
    def host_port_of(url: str) -> tuple[str, int] | None:
        """(host, port) a http(s)/ftp URL connects to (default port by scheme); None if it names none."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            return None  # the syntax checks report malformed URLs
        if not host or port is None:
            return None
        return host, port

    async def host_reason(self, host: str, port: int) -> str | None:
        """Create-time check of one host:port: the refusal reason, or None.

        A name that does not resolve now is accepted: it is checked again at transfer time, and a
        name may legitimately resolve only inside the site's network (documented in docs/security.md).
        """
        try:
            await self.checked_addresses(host, port)
        except EgressDenied as exc:
            return exc.reason
        except Unresolvable:
            return None
        return None
