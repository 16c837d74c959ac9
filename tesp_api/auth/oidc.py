"""Bearer tokens: JWTs from the issuers in the allowlist, verified with the issuer's published keys.

Order matters: the unverified ``iss`` is only used to *look up* the issuer in the allowlist; keys are
fetched only from where the settings say that issuer lives, so a token can never point us at keys
of its own choosing. Only asymmetric algorithms listed for the issuer are accepted (never ``none``,
never HS*), and the key type must fit the algorithm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from tesp_api.auth.errors import Unauthenticated
from tesp_api.auth.jwks import IssuerKeys, UnknownSigningKey
from tesp_api.config.settings import AuthSettings, OidcIssuer
from tesp_api.store.port import Owner


def bearer_challenge(realm: str, error: str | None = None, description: str | None = None) -> str:
    """RFC 6750 section 3: ``error="invalid_token"`` tells a client to get a new token."""
    parts = [f'realm="{_quote(realm)}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quote(description)}"')
    return "Bearer " + ", ".join(parts)


def _quote(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    owner: Owner
    claims: dict[str, Any]
    issuer: OidcIssuer


_CLAIM_ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (audience)"),
    (jwt.InvalidIssuerError, "the token issuer is not trusted"),
    (jwt.InvalidSignatureError, "the token signature is invalid"),
    (jwt.InvalidAlgorithmError, "the token algorithm is not accepted"),
    (jwt.InvalidIssuedAtError, "the token issued-at time (iat) is invalid"),
]


class OidcAuthenticator:
    def __init__(
        self, auth: AuthSettings, client: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._auth = auth
        self._issuers = {i.issuer: i for i in auth.issuers}
        self._keys = {
            i.issuer: IssuerKeys(
                i,
                client,
                min_refresh_seconds=auth.jwks_min_refresh_seconds,
                max_age_seconds=auth.jwks_max_age_seconds,
                clock=clock,
                insecure_http_hosts=auth.insecure_http_hosts,
            )
            for i in auth.issuers
        }

    @property
    def challenge(self) -> str:
        return bearer_challenge(self._auth.realm)

    def keys_of(self, issuer: str) -> IssuerKeys:
        return self._keys[issuer]

    def _fail(self, description: str) -> Unauthenticated:
        return Unauthenticated(
            description, (bearer_challenge(self._auth.realm, "invalid_token", description),)
        )

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or Unauthenticated (401) / AuthUnavailable (503)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise self._fail("the token is not a well-formed JWT") from None
        alg, kid, iss = header.get("alg"), header.get("kid"), unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise self._fail("the token issuer is not trusted")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise self._fail("the token algorithm is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise self._fail("the token key id (kid) is not a string")
        try:
            key = await self._keys[issuer.issuer].key_for(kid, alg)
        except UnknownSigningKey:
            raise self._fail("the token is signed with a key its issuer does not publish") from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self._auth.leeway_seconds,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise self._fail(f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError as exc:
            for kind, message in _CLAIM_ERRORS:
                if isinstance(exc, kind):
                    raise self._fail(message) from None
            raise self._fail("the token is invalid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise self._fail("the token subject (sub) is empty")
        return VerifiedToken(Owner(subject=subject, issuer=issuer.issuer), claims, issuer)
