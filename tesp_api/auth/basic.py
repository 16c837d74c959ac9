"""HTTP Basic authentication against the users listed in the settings.

Why the verified-credentials cache: a scrypt check costs tens of milliseconds and ~32 MiB on purpose,
and clients such as py-tes send the password with every request. After one successful check, an
HMAC of (username, password) under a per-process random key is remembered for a short time, so the
next request costs one HMAC. The cache holds no password and dies with the process; it belongs to
one authenticator, built from one set of settings, so a changed hash means a new authenticator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from tesp_api.auth.errors import Unauthenticated
from tesp_api.auth.passwords import ScryptHash, hash_password, parse_hash, verify_password
from tesp_api.auth.principal import Principal
from tesp_api.config.settings import BasicUser
from tesp_api.store.port import Owner

BASIC_ISSUER = "basic"  # Owner.issuer of Basic users; OIDC issuers are URLs, so never equal to this
_CACHE_SECONDS = 300.0
_CACHE_SIZE = 1024


def basic_challenge(realm: str) -> str:
    return f'Basic realm="{_quote(realm)}", charset="UTF-8"'


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "")


def parse_basic_credentials(value: str) -> tuple[str, str]:
    """(username, password) from the part after "Basic "; ValueError when it is not well formed."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("the Basic credentials are not base64 of UTF-8 text") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise ValueError("the Basic credentials are not username:password")
    return username, password


class BasicAuthenticator:
    """Checks ``Authorization: Basic ...`` values; the admin rules are applied by the caller."""

    def __init__(
        self,
        users: Iterable[BasicUser],
        realm: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users: dict[str, tuple[ScryptHash, bool]] = {
            u.username: (parse_hash(u.password_hash.get_secret_value()), u.admin) for u in users
        }
        self._realm = realm
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        # Unknown usernames are checked against this, so that they cost as much as known ones.
        self._decoy = parse_hash(hash_password(secrets.token_urlsafe(16), log2_n=self._typical_log2_n()))

    def _typical_log2_n(self) -> int:
        return max((h.log2_n for h, _ in self._users.values()), default=10)

    @property
    def challenge(self) -> str:
        return basic_challenge(self._realm)

    def _fail(self, message: str) -> Unauthenticated:
        return Unauthenticated(message, (self.challenge,))

    async def authenticate(self, credentials: str) -> tuple[Principal, str]:
        """The principal (admin flag from the user's entry) and its subject, or Unauthenticated."""
        try:
            username, password = parse_basic_credentials(credentials)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        entry = self._users.get(username)
        if not await self._password_matches(username, password, entry[0] if entry else None):
            raise self._fail("invalid username or password")
        assert entry is not None
        return Principal(owner=Owner(subject=username, issuer=BASIC_ISSUER), is_admin=entry[1]), username

    async def _password_matches(self, username: str, password: str, hashed: ScryptHash | None) -> bool:
        digest = hmac.new(
            self._cache_key,
            username.encode() + b"\0" + password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()
        now = self._clock()
        expires = self._verified.get(digest)
        if hashed is not None and expires is not None and expires > now:
            return True
        # scrypt is CPU work of tens of milliseconds: keep the event loop free meanwhile.
        ok = await asyncio.to_thread(verify_password, password, hashed or self._decoy)
        if not ok or hashed is None:
            return False
        self._verified[digest] = now + _CACHE_SECONDS
        self._verified.move_to_end(digest)
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return True
