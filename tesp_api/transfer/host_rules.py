"""The host rules of the SSRF guard (``transfer.allowed_hosts`` / ``denied_hosts``, the control
plane) and the IP literal forms they accept: stdlib only, imports nothing of tesp_api.

Why a module of its own: the settings check each rule when they are loaded
(``config/settings.py``), and ``egress.py``, which enforces the rules, imports the settings. With
the parser here, settings import a leaf, as they do ``auth/passwords.py`` and ``auth/urls.py``,
and there is no config <-> transfer import cycle (the import-linter contracts in pyproject.toml
keep it so). ``egress.py`` re-exports every name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NUMERIC_V4 = re.compile(r"[0-9a-fA-FxX.]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def strip_brackets(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def parse_ip_literal(host: str) -> Address | None:
    """``host`` as an IP address if it is a literal in any form the C library accepts, else None."""
    host = strip_brackets(host).rstrip(".")
    if not host:
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # 2130706433, 0x7f000001, 0177.0.0.1, 127.1
        except OSError:
            return None
    return None


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed here)
        return ipaddress.IPv4Address(int(ip))
    return None


@dataclass(frozen=True)
class HostRule:
    """One entry of allowed_hosts / denied_hosts / the control plane: a name or network, maybe a port.

    ``this_machine``: a listener bound to 0.0.0.0/:: -- every loopback or local address matches.
    """

    name: str | None = None
    network: Network | None = None
    port: int | None = None
    this_machine: bool = False

    def matches_name(self, host: str, port: int) -> bool:
        return self.name is not None and self.name == host and self.port in (None, port)

    def matches_address(self, ip: Address, port: int, local: Iterable[Address] = ()) -> bool:
        if self.port not in (None, port):
            return False
        candidates = [ip] + ([inner] if (inner := embedded_ipv4(ip)) is not None else [])
        if self.this_machine:
            return any(c.is_loopback or c.is_unspecified or c in set(local) for c in candidates)
        return self.network is not None and any(
            c.version == self.network.version and c in self.network for c in candidates
        )


def parse_rule(entry: str) -> HostRule:
    """``name``, ``name:port``, ``IP``, ``IP:port``, ``[IPv6]:port`` or a CIDR. Raises ValueError."""
    text = entry.strip().lower()
    if not text:
        raise ValueError("empty host entry")
    if "/" in text:
        return HostRule(network=ipaddress.ip_network(text, strict=False))
    host, port = text, None
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad host entry {entry!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in {entry!r}")
    ip = parse_ip_literal(host)
    if ip is not None:
        if ip.is_unspecified:
            return HostRule(port=port, this_machine=True)
        return HostRule(network=ipaddress.ip_network(ip), port=port)
    if not host or not re.fullmatch(r"[a-z0-9_.\-]+", host):
        raise ValueError(f"bad host entry {entry!r}")
    return HostRule(name=host.rstrip("."), port=port)
