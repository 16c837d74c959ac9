"""The signing keys of one allowlisted OIDC issuer, found through discovery and cached.

The keys are fetched when first needed, again when they are older than ``max_age`` (so a key the
issuer withdrew stops working), and again when a token names a key id we do not know (the issuer
rotated its keys) -- but at most once per ``min_refresh`` seconds, so a stream of tokens with made-up
key ids cannot make this service hammer the issuer. Failing to reach the issuer is reported as
:class:`AuthUnavailable` (503): the caller's token may be fine, we just cannot tell right now.

Discovery and the JWKS are fetched over https only: over plain http anyone on the path could hand
us their own keys and sign tokens for any user. The settings are refused at start when an issuer's
discovery or JWKS URL is http, and a discovered ``jwks_uri`` that is http is refused too; only the
hosts in ``auth.insecure_http_hosts`` (a test's local issuer) are exempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import httpx
import jwt

from tesp_api.auth.errors import AuthUnavailable
from tesp_api.auth.urls import discovery_url_of, insecure_url_reason
from tesp_api.config.settings import OidcIssuer

log = logging.getLogger(__name__)

_MAX_DOCUMENT_BYTES = 1024 * 1024
_SIGNING_KEY_TYPES = {"RSA", "EC", "OKP"}  # never "oct": shared secrets have no place in a public JWKS
_KEY_TYPE_OF_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class UnknownSigningKey(Exception):
    """No key of the issuer fits the token (unknown kid, or no kid and no single candidate)."""


class IssuerUnreachable(Exception):
    """Discovery or the JWKS could not be fetched or read."""


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise IssuerUnreachable(f"GET {url}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_DOCUMENT_BYTES:
                    raise IssuerUnreachable(f"GET {url}: document larger than {_MAX_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise IssuerUnreachable(f"GET {url}: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise IssuerUnreachable(f"GET {url}: not JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnreachable(f"GET {url}: not a JSON object")
    return document


class IssuerKeys:
    def __init__(
        self,
        issuer: OidcIssuer,
        client: httpx.AsyncClient,
        *,
        min_refresh_seconds: float,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        insecure_http_hosts: Collection[str] = (),
    ) -> None:
        self._issuer = issuer
        self._insecure_http_hosts = tuple(insecure_http_hosts)
        self._client = client
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._jwks_url: str | None = issuer.jwks_url
        self._keys: list[dict[str, Any]] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self.fetch_count = 0  # how many times the JWKS was requested (for tests and metrics)

    async def key_for(self, kid: str | None, alg: str) -> Any:
        """The public key to verify a token with header (kid, alg)."""
        if not self._stale():
            found = self._find(kid, alg)
            if found is not None:
                return found
        async with self._lock:
            if self._stale():
                await self._refresh(keep_stale=True)
            found = self._find(kid, alg)
            if found is None and self._may_refresh():
                # A key we do not know may be a rotated one: if the issuer cannot be asked, say so (503).
                await self._refresh(keep_stale=False)
                found = self._find(kid, alg)
        if found is None:
            raise UnknownSigningKey("no key of the issuer matches the token")
        return found

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    def _may_refresh(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh

    async def _refresh(self, *, keep_stale: bool) -> None:
        if self._attempted_at is not None and not self._may_refresh() and self._keys:
            return  # a fetch was tried moments ago: keep what we have rather than retry at once
        self._attempted_at = self._clock()
        try:
            keys = await self._fetch()
        except IssuerUnreachable as exc:
            log.warning("OIDC issuer %s: cannot fetch its keys: %s", self._issuer.issuer, exc)
            self._jwks_url = self._issuer.jwks_url  # rediscover next time: the jwks_uri may have moved
            if keep_stale and self._keys:
                return
            raise AuthUnavailable(
                "cannot check the token now: its issuer's signing keys are unavailable"
            ) from None
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("OIDC issuer %s: %d signing key(s) loaded", self._issuer.issuer, len(keys))

    async def _fetch(self) -> list[dict[str, Any]]:
        if self._jwks_url is None:
            self._jwks_url = await self._discover()
        self.fetch_count += 1
        document = await _get_json(self._client, self._jwks_url)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise IssuerUnreachable("the JWKS has no `keys` list")
        return [
            k
            for k in keys
            if isinstance(k, dict) and k.get("kty") in _SIGNING_KEY_TYPES and k.get("use", "sig") == "sig"
        ]

    async def _discover(self) -> str:
        url = discovery_url_of(self._issuer)
        document = await _get_json(self._client, url)
        if document.get("issuer") != self._issuer.issuer:
            # OpenID Connect Discovery 1.0 section 4.3: a mismatch means the document is not this issuer's.
            raise IssuerUnreachable(f"{url}: its `issuer` is not {self._issuer.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IssuerUnreachable(f"{url}: no usable `jwks_uri`")
        reason = insecure_url_reason(jwks_uri, self._insecure_http_hosts)
        if reason:
            raise IssuerUnreachable(f"{url}: jwks_uri {reason}")
        return jwks_uri

    def _find(self, kid: str | None, alg: str) -> Any | None:
        kty = _KEY_TYPE_OF_ALG.get(alg[:2])
        candidates = [
            k
            for k in self._keys
            if k.get("kty") == kty and k.get("alg", alg) == alg and (kid is None or k.get("kid") == kid)
        ]
        if len(candidates) != 1:
            return None  # none, or no kid and several keys: refuse to guess
        try:
            return jwt.PyJWK(candidates[0], algorithm=alg).key
        except (jwt.exceptions.PyJWKError, jwt.exceptions.InvalidKeyError, ValueError, TypeError):
            return None
