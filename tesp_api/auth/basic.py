"""HTTP Basic authentication against the users listed in the settings.

Why the verified-credentials cache: a scrypt check costs tens of milliseconds and ~32 MiB on purpose,
and clients such as py-tes send the password with every request. After one successful check, an
HMAC of (username, password) under a per-process random key is remembered for a short time, so the
next request costs one HMAC. The cache holds no password and dies with the process; it belongs to
one authenticator, built from one set of settings, so a changed hash means a new authenticator.

Why a pool of its own: scrypt runs in threads so the event loop stays free, but in the default
executor a flood of logins queued ahead of S3 transfers and every other ``to_thread`` call (60
concurrent wrong passwords made a fresh login take 4 s instead of 0.2 s). Checks run in a small
pool (``auth.password_hash_threads``), at most ``auth.password_hash_queue`` wait for it (more get a
503 with Retry-After), identical credentials being checked already share that check, and failed
logins are throttled per user and per client address (throttle.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from tesp_api.auth.errors import AuthUnavailable, Unauthenticated
from tesp_api.auth.passwords import ScryptHash, hash_password, parse_hash, verify_password
from tesp_api.auth.principal import Principal
from tesp_api.auth.throttle import LoginThrottle, ThrottlePolicy
from tesp_api.config.settings import AuthSettings, BasicUser
from tesp_api.store.port import Owner

BASIC_ISSUER = "basic"  # Owner.issuer of Basic users; OIDC issuers are URLs, so never equal to this
_CACHE_SECONDS = 300.0
_CACHE_SIZE = 1024
POOL_THREAD_PREFIX = "tesp-password-check"


def throttle_policy(auth: AuthSettings) -> ThrottlePolicy:
    return ThrottlePolicy(
        user_failures=auth.login_failures_before_throttle,
        address_failures=auth.login_address_failures_before_throttle,
        base_delay=auth.login_throttle_seconds,
        max_delay=auth.login_throttle_max_seconds,
        memory=auth.login_failure_memory_seconds,
    )


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
        policy: ThrottlePolicy | None = None,
        threads: int = 2,
        queue: int = 64,
    ) -> None:
        self._users: dict[str, tuple[ScryptHash, bool]] = {
            u.username: (parse_hash(u.password_hash.get_secret_value()), u.admin) for u in users
        }
        self._realm = realm
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self.throttle = LoginThrottle(list(self._users), policy or ThrottlePolicy(), clock=clock)
        # Threads are started on first use; shut down by close().
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=POOL_THREAD_PREFIX
        )
        self._queue = queue
        self._checking: dict[bytes, asyncio.Future[bool]] = {}  # credentials being checked now
        # Unknown usernames are checked against this, so that they cost as much as known ones.
        self._decoy = parse_hash(hash_password(secrets.token_urlsafe(16), log2_n=self._typical_log2_n()))

    def _typical_log2_n(self) -> int:
        return max((h.log2_n for h, _ in self._users.values()), default=10)

    @property
    def challenge(self) -> str:
        return basic_challenge(self._realm)

    def _fail(self, message: str) -> Unauthenticated:
        return Unauthenticated(message, (self.challenge,))

    async def authenticate(self, credentials: str, address: str | None = None) -> tuple[Principal, str]:
        """The principal (admin flag from the user's entry) and its subject; Unauthenticated (401),
        LoginThrottled (429) or AuthUnavailable (503: too many checks waiting). ``address`` is the
        client's, for throttling."""
        try:
            username, password = parse_basic_credentials(credentials)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        entry = self._users.get(username)
        if not await self._password_matches(username, password, entry[0] if entry else None, address):
            raise self._fail("invalid username or password")
        assert entry is not None
        return Principal(owner=Owner(subject=username, issuer=BASIC_ISSUER), is_admin=entry[1]), username

    async def _password_matches(
        self, username: str, password: str, hashed: ScryptHash | None, address: str | None
    ) -> bool:
        digest = hmac.new(
            self._cache_key,
            username.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()
        expires = self._verified.get(digest)
        if hashed is not None and expires is not None and expires > self._clock():
            return True  # checked moments ago: no scrypt, and no throttle for a client that logged in
        running = self._checking.get(digest)
        if running is not None:
            return await asyncio.shield(running)  # the same credentials are being checked: share it
        attempt = self.throttle.admit(username if hashed is not None else None, address)
        if len(self._checking) >= self._queue:
            self.throttle.cancel(attempt)
            raise AuthUnavailable("too many password checks at once, try again shortly")
        loop = asyncio.get_running_loop()
        # scrypt is CPU work of tens of milliseconds: in the dedicated pool, the event loop stays free.
        check = loop.run_in_executor(self._pool, verify_password, password, hashed or self._decoy)
        self._checking[digest] = check
        try:
            ok = await asyncio.shield(check)
        except BaseException:
            self.throttle.cancel(attempt)  # the client went away (the check still ends in the pool)
            raise
        finally:
            if self._checking.get(digest) is check:
                del self._checking[digest]
        ok = ok and hashed is not None
        self.throttle.done(attempt, ok=ok)
        if not ok:
            return False
        self._verified[digest] = self._clock() + _CACHE_SECONDS
        self._verified.move_to_end(digest)
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return True

    def close(self) -> None:
        """Stop the pool's threads (checks still queued are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
