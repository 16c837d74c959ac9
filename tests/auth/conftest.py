"""Shared pieces for the auth tests: cheap password hashes, settings builders, the local issuer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tesp_api.auth.passwords import hash_password
from tesp_api.config.settings import Settings
from tests.services.oidc_issuer import LocalOidcIssuer, running_issuer

AUDIENCE = "tesp"


def cheap_hash(password: str) -> str:
    """A real scrypt hash at a low cost, so tests stay fast (the format carries the cost)."""
    return hash_password(password, log2_n=10)


def settings_with(**auth: Any) -> Settings:
    """``[auth]`` with these keys; the local issuer (http on 127.0.0.1) is allowed plain http."""
    auth.setdefault("insecure_http_hosts", ["127.0.0.1"])
    return Settings.model_validate({"auth": auth})


def basic_settings(**extra: Any) -> Settings:
    users = [
        {"username": "alice", "password_hash": cheap_hash("alice-pw")},
        {"username": "bob", "password_hash": cheap_hash("bob-pw")},
        {"username": "root", "password_hash": cheap_hash("root-pw"), "admin": True},
    ]
    return settings_with(mode="basic", users=users, **extra)


def oidc_settings(issuer: LocalOidcIssuer, **extra: Any) -> Settings:
    issuers = extra.pop("issuers", [{"issuer": issuer.issuer, "audience": [AUDIENCE]}])
    return settings_with(mode="oidc", issuers=issuers, **extra)


class FakeClock:
    """Monotonic time the test moves by hand: rate limits are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def issuer() -> Iterator[LocalOidcIssuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
