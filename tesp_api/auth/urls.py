"""Which OIDC URLs this service fetches, and whether it may (stdlib only, imports nothing of
tesp_api): used by the settings check (config/settings.py) and by the key fetcher (jwks.py), so the
settings module needs no import of a module that imports it back."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tesp_api.config.settings import OidcIssuer


def discovery_url_of(issuer: OidcIssuer) -> str:
    return issuer.discovery_url or issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"


def insecure_url_reason(url: str, insecure_http_hosts: Collection[str]) -> str | None:
    """Why ``url`` may not be fetched for keys (None: it may): https, or http to an exempt host."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        netloc_host = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return f"{url!r} is not a URL"
    if not host:
        return f"{url!r} has no host"
    if parts.scheme == "https":
        return None
    allowed = {h.lower() for h in insecure_http_hosts}
    if parts.scheme == "http" and (host in allowed or netloc_host in allowed):
        return None
    return f"{url!r} must be https (plain http lets anyone on the path substitute the signing keys)"


def fetched_urls(issuer: OidcIssuer) -> list[str]:
    """The URLs this service will GET for an issuer: its jwks_url, else its discovery document."""
    return [issuer.jwks_url] if issuer.jwks_url else [discovery_url_of(issuer)]
