"""The one object the HTTP layer asks "who is this?": ``await authenticator.authenticate(header)``.

It reads only the ``Authorization`` header value, so it can be used (and tested) without FastAPI.
Which scheme is used is decided by the header's scheme word, never by guessing; with auth.mode
"none" everybody is an anonymous administrator (local, single-user use).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tesp_api.auth.admin import basic_user_is_admin, token_holder_is_admin
from tesp_api.auth.basic import BasicAuthenticator, throttle_policy
from tesp_api.auth.effective import effective_auth_settings
from tesp_api.auth.errors import Unauthenticated
from tesp_api.auth.oidc import OidcAuthenticator
from tesp_api.auth.principal import ANONYMOUS_ADMIN, Principal
from tesp_api.config.settings import AuthSettings, Settings


class Authenticator:
    def __init__(
        self,
        auth: AuthSettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``auth`` is the effective auth settings (see :func:`build_authenticator`)."""
        self.settings = auth
        self._owns_client = http_client is None and "oidc" in auth.mode
        self._client = http_client
        if self._owns_client:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(auth.http_timeout), follow_redirects=False)
        self.basic = (
            BasicAuthenticator(
                auth.users,
                auth.realm,
                clock=clock,
                policy=throttle_policy(auth),
                threads=auth.password_hash_threads,
                queue=auth.password_hash_queue,
            )
            if "basic" in auth.mode
            else None
        )
        self.oidc = (
            OidcAuthenticator(auth, self._client, clock=clock)
            if "oidc" in auth.mode and self._client is not None
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.basic is not None or self.oidc is not None

    @property
    def challenges(self) -> tuple[str, ...]:
        """What to put in WWW-Authenticate when no (usable) credentials came."""
        return tuple(a.challenge for a in (self.basic, self.oidc) if a is not None)

    async def authenticate(self, authorization: str | None, client_address: str | None = None) -> Principal:
        """The caller, from the Authorization header value; Unauthenticated (401), LoginThrottled (429)
        or AuthUnavailable (503). ``client_address`` (the peer's IP) is used to throttle failed logins."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if not authorization or not authorization.strip():
            raise Unauthenticated("authentication required", self.challenges)
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self.basic is not None:
            principal, username = await self.basic.authenticate(credentials, client_address)
            return Principal(
                principal.owner, basic_user_is_admin(self.settings, username, principal.is_admin)
            )
        if scheme == "bearer" and self.oidc is not None:
            token = await self.oidc.verify(credentials.strip())
            return Principal(
                token.owner,
                token_holder_is_admin(self.settings, token.issuer, token.owner.subject, token.claims),
            )
        raise Unauthenticated("unsupported authorization scheme", self.challenges)

    async def aclose(self) -> None:
        if self.basic is not None:
            self.basic.close()
        if self._owns_client and self._client is not None:
            await self._client.aclose()


def build_authenticator(
    settings: Settings,
    *,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Authenticator:
    """The authenticator for these settings, legacy ``[basic_auth]``/``[oauth]`` included."""
    return Authenticator(effective_auth_settings(settings), http_client=http_client, clock=clock)
