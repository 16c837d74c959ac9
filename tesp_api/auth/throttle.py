"""Failed-login throttling for Basic passwords, per user and per client address.

Why: each password check is a deliberately slow scrypt run, so a flood of wrong passwords both
guesses passwords and burns CPU. After ``login_failures_before_throttle`` failures for one user (or
``login_address_failures_before_throttle`` from one address) its logins are answered 429 with
Retry-After, without any hashing, for ``login_throttle_seconds``, doubling with every further
failure up to ``login_throttle_max_seconds``. Failures are forgotten ``login_failure_memory_seconds``
after the last one; a correct password resets that user's count.

Checks in flight count too: below the limit only as many checks run at once as failures remain
allowed, and once throttled one attempt at a time is let through after the delay, so 60 concurrent
wrong passwords for one user cause at most a handful of scrypt runs, not 60.

Memory is bounded: users are only the configured ones (an unknown username counts against its
address alone), and addresses are kept in an LRU of :data:`MAX_ADDRESSES` entries. An IPv6 client
is counted by its /64, which is what one host usually gets. The address is the one uvicorn reports,
so behind a proxy ``api.forwarded_allow_ips`` must name the proxy.

A user whose password is guessed at from elsewhere is throttled too (that is the point), but a
client that already logged in keeps working: a verified password is remembered by the
authenticator (basic.py) and is accepted without a throttle check.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tesp_api.auth.errors import LoginThrottled

MAX_ADDRESSES = 10000


@dataclass(slots=True)
class _Entry:
    failures: int = 0
    pending: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    user_failures: int = 5
    address_failures: int = 50
    base_delay: float = 1.0
    max_delay: float = 300.0
    memory: float = 900.0


def address_key(host: str | None) -> str | None:
    """The key of a client address: IPv4 as is, IPv6 by its /64 (an IPv4-mapped one as IPv4)."""
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a Unix socket peer, a test client name): count it as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class Attempt:
    """One admitted password check; report its outcome with :meth:`LoginThrottle.done`."""

    user: _Entry | None
    address: _Entry | None


class LoginThrottle:
    def __init__(
        self,
        usernames: list[str],
        policy: ThrottlePolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._users: dict[str, _Entry] = {name: _Entry() for name in usernames}
        self._addresses: OrderedDict[str, _Entry] = OrderedDict()

    def _address(self, key: str) -> _Entry:
        entry = self._addresses.get(key)
        if entry is None:
            entry = self._addresses[key] = _Entry()
            while len(self._addresses) > MAX_ADDRESSES:
                oldest, old = next(iter(self._addresses.items()))
                if old.pending:  # never drop an entry a running check will report to
                    self._addresses.move_to_end(oldest)
                    break
                self._addresses.popitem(last=False)
        self._addresses.move_to_end(key)
        return entry

    def _wait(self, entry: _Entry, limit: int, now: float, *, count_pending: bool) -> float | None:
        """Seconds to wait before ``entry`` may try again, or None when it may try now. Checks in
        flight count against the limit for a user always (one client's identical requests share
        one check, see basic.py), for an address only once it has failed (many users behind one
        NAT may log in at once)."""
        if entry.failures and now - entry.last_failure >= self._policy.memory:
            entry.failures, entry.blocked_until = 0, 0.0
        if now < entry.blocked_until:
            return entry.blocked_until - now
        if entry.pending and (count_pending or entry.failures) and entry.failures + entry.pending >= limit:
            return self._policy.base_delay  # at the limit: one attempt at a time
        return None

    def admit(self, username: str | None, address: str | None) -> Attempt:
        """An attempt for a configured ``username`` (None: unknown) from ``address``, or LoginThrottled."""
        now = self._clock()
        user = self._users.get(username) if username is not None else None
        key = address_key(address)
        addr = self._address(key) if key is not None else None
        waits = [
            w
            for entry, limit, strict in (
                (user, self._policy.user_failures, True),
                (addr, self._policy.address_failures, False),
            )
            if entry is not None
            for w in [self._wait(entry, limit, now, count_pending=strict)]
            if w is not None
        ]
        if waits:
            raise LoginThrottled(max(1, math.ceil(max(waits))))
        for entry in (user, addr):
            if entry is not None:
                entry.pending += 1
        return Attempt(user, addr)

    def done(self, attempt: Attempt, *, ok: bool) -> None:
        now = self._clock()
        policy = self._policy
        limits = ((attempt.user, policy.user_failures), (attempt.address, policy.address_failures))
        for entry, limit in limits:
            if entry is None:
                continue
            entry.pending = max(0, entry.pending - 1)
            if ok:
                if entry is attempt.user:
                    entry.failures, entry.blocked_until = 0, 0.0
                continue
            entry.failures += 1
            entry.last_failure = now
            if entry.failures >= limit:
                delay = self._policy.base_delay * 2.0 ** min(entry.failures - limit, 30)
                entry.blocked_until = now + min(delay, self._policy.max_delay)

    def cancel(self, attempt: Attempt) -> None:
        """The check did not run to an outcome (the request was dropped): count nothing."""
        for entry in (attempt.user, attempt.address):
            if entry is not None:
                entry.pending = max(0, entry.pending - 1)

    @property
    def tracked_addresses(self) -> int:
        return len(self._addresses)
