"""Warnings about a control plane that executors could reach (issue 11, docs/security.md).

Pulsar runs whatever command line it is handed, as its own user, on its host. Whoever can talk to
it -- its REST port without a ``private_token``, or the AMQP broker it consumes with credentials
anyone knows -- can run commands there. Task executors are untrusted code: with no network
(``runtime.network = "none"``, the default) they reach neither; once the operator gives them a
network, only a Unix socket they cannot see, a required token, and broker credentials that are not
the default keep them out. These checks cannot see the network (a remote Pulsar may sit behind a
firewall), so they warn loudly instead of refusing to start.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

from tesp_api.config.settings import PulsarServer, Settings

log = logging.getLogger(__name__)

DEFAULT_BROKER_USERS = {"guest"}  # RabbitMQ's default account; kombu uses guest:guest when none is given
BANNER = "!" * 78


def executor_network(settings: Settings) -> str | None:
    """Why executors may have a network (for the message), or None when none of them can."""
    runtime = settings.runtime
    if runtime.network != "none":
        return f"runtime.network = {runtime.network!r}"
    if runtime.allow_task_network:
        return "runtime.allow_task_network = true"
    return None


def broker_uses_default_credentials(amqp_url: str) -> bool:
    """guest (any password), no user at all (kombu then logs in as guest:guest), or no password."""
    parts = urlsplit(amqp_url)
    user = unquote(parts.username) if parts.username else ""
    password = unquote(parts.password) if parts.password else ""
    return not user or user in DEFAULT_BROKER_USERS or not password


def _address(url: str) -> str:
    """scheme://host:port only: a URL's user, password or query never reach a log line."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _server_warnings(server: PulsarServer, network: str | None) -> list[str]:
    found = []
    if server.amqp_url is not None and broker_uses_default_credentials(server.amqp_url.get_secret_value()):
        found.append(
            f"Pulsar server {server.name!r}: the AMQP broker URL uses default credentials (guest, or no "
            "password). Anyone who can reach the broker can publish a setup message that Pulsar runs on its "
            "host; give Pulsar and tesp-api a broker user with a strong password (docs/security.md)."
        )
    if server.url and not server.amqp_url and not server.uds and server.private_token is None and network:
        found.append(
            f"Pulsar server {server.name!r}: REST on {_address(server.url)} without a private_token while executors have "
            f"a network ({network}). An executor that reaches that address can make Pulsar "
            "run commands on its host; set pulsar.private_token (and Pulsar's own), bind Pulsar to a Unix "
            "socket (pulsar.uds), or keep executors without network (docs/security.md)."
        )
    return found


def exposure_warnings(settings: Settings) -> list[str]:
    """Every reason executors (or anyone else) could drive Pulsar with these settings; empty when none."""
    network = executor_network(settings)
    return [w for server in settings.pulsar.effective_servers() for w in _server_warnings(server, network)]


def warn_about_exposure(settings: Settings) -> list[str]:
    """Logs each warning as a banner at WARNING level (one per problem) and returns them."""
    found = exposure_warnings(settings)
    for text in found:
        log.warning("\n%s\n!! CONTROL PLANE EXPOSED: %s\n%s", BANNER, text, BANNER)
    return found
