"""Signing keys come over https only: an http discovery or JWKS URL would let anyone on the path
serve their own keys and sign tokens for any user. Refused at start (settings), and a discovered
http ``jwks_uri`` is refused when met; ``auth.insecure_http_hosts`` exempts a test issuer's host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tesp_api.auth.authenticator import build_authenticator
from tesp_api.auth.errors import AuthUnavailable
from tesp_api.config.settings import Settings
from tests.auth.test_start_refusals import serve_with
from tests.services.oidc_issuer import LocalOidcIssuer, running_issuer


def oidc(*, insecure_http_hosts: list[str] | None = None, **issuer: Any) -> Settings:
    entry = {"issuer": "https://idp.example.org", "audience": ["tesp"], **issuer}
    auth: dict[str, Any] = {"mode": "oidc", "issuers": [entry]}
    if insecure_http_hosts is not None:
        auth["insecure_http_hosts"] = insecure_http_hosts
    return Settings.model_validate({"auth": auth})


@pytest.mark.parametrize(
    "issuer",
    [
        {"jwks_url": "http://idp.example.org/jwks"},
        {"issuer": "http://idp.example.org"},  # discovery at {issuer}/.well-known/...
        {"discovery_url": "http://idp.example.org/.well-known/openid-configuration"},
        {"jwks_url": "ftp://idp.example.org/jwks"},
        {"jwks_url": "HTTP://127.0.0.1/jwks"},  # not exempt unless listed
    ],
    ids=["jwks_url", "issuer", "discovery_url", "other-scheme", "loopback-not-listed"],
)
def test_an_http_key_url_is_refused_in_the_settings(issuer: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="must be https"):
        oidc(**issuer)


def test_the_legacy_oauth_issuer_must_be_https_too() -> None:
    with pytest.raises(ValidationError, match="must be https"):
        Settings.model_validate(
            {"oauth": {"enable": True, "issuer": "http://idp.example.org", "audience": "t"}}
        )


def test_https_urls_are_accepted() -> None:
    oidc(jwks_url="https://keys.example.org/jwks")
    oidc()


@pytest.mark.parametrize("listed", ["127.0.0.1", "127.0.0.1:8443"])
def test_a_listed_host_may_use_http(listed: str) -> None:
    oidc(jwks_url="http://127.0.0.1:8443/jwks", insecure_http_hosts=[listed])
    with pytest.raises(ValidationError, match="must be https"):
        oidc(jwks_url="http://127.0.0.1:9999/jwks", insecure_http_hosts=["127.0.0.1:8443"])


def test_tesp_api_serve_refuses_to_start_with_an_http_jwks_url(tmp_path: Path) -> None:
    done = serve_with(
        tmp_path,
        '[default.auth]\nmode = "oidc"\n[[default.auth.issuers]]\nissuer = "https://idp.example.org"\n'
        'audience = ["tesp"]\njwks_url = "http://idp.example.org/jwks"\n',
    )
    assert done.returncode == 2
    assert "must be https" in done.stderr


@pytest.fixture
def issuer() -> Any:
    with running_issuer() as running:
        yield running


async def test_a_discovered_http_jwks_uri_is_refused_and_never_fetched(issuer: LocalOidcIssuer) -> None:
    """Discovery over http is allowed for the local issuer's host, but the document it serves names
    a jwks_uri on another http host: no key is fetched, the token cannot be checked (503)."""
    port = issuer.url.rsplit(":", 1)[1]
    issuer.jwks_uri = f"http://localhost:{port}/jwks"
    settings = oidc(issuer=issuer.issuer, insecure_http_hosts=["127.0.0.1"])
    async with httpx.AsyncClient() as client:
        authenticator = build_authenticator(settings, http_client=client)
        with pytest.raises(AuthUnavailable):
            await authenticator.authenticate("Bearer " + issuer.mint("alice"))
    assert issuer.requests["/.well-known/openid-configuration"] >= 1
    assert issuer.requests["/jwks"] == 0
