"""Password guessing against Basic auth, through the real app (httpx ASGI transport, real scrypt
hashes at a low cost, a real SQLite store). Time is a hand-moved clock: nothing here depends on how
fast the machine is.

* many wrong passwords for one user: 429 with Retry-After, and no more scrypt runs;
* meanwhile another user's correct login is answered (200);
* from one address across many usernames: that address is throttled, others are not;
* the issue's 60 concurrent wrong passwords: a handful of checks, all on the dedicated pool,
  never on the default executor that S3 transfers use.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import tesp_api.auth.basic as basic_module
from tesp_api.api.app import create_app
from tesp_api.auth import passwords
from tesp_api.auth.authenticator import Authenticator, build_authenticator
from tesp_api.auth.basic import POOL_THREAD_PREFIX
from tesp_api.auth.passwords import ScryptHash
from tesp_api.auth.throttle import MAX_ADDRESSES, LoginThrottle, ThrottlePolicy
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tests.auth.conftest import FakeClock, basic_settings

TASKS = "/ga4gh/tes/v1/tasks"


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


class CheckSpy:
    """Records the thread of every scrypt check (wrapping the real function, which still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[str] = []
        self._lock = threading.Lock()
        real = passwords.verify_password

        def spy(password: str, hashed: ScryptHash) -> bool:
            with self._lock:
                self.threads.append(threading.current_thread().name)
            return real(password, hashed)

        monkeypatch.setattr(basic_module, "verify_password", spy)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> CheckSpy:
    return CheckSpy(monkeypatch)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app_for(
    store: SqliteTaskStore, clock: FakeClock
) -> AsyncIterator[Callable[..., tuple[FastAPI, Authenticator]]]:
    made: list[Authenticator] = []

    def make(**auth: Any) -> tuple[FastAPI, Authenticator]:
        settings: Settings = basic_settings(**auth)
        authenticator = build_authenticator(settings, clock=clock)
        made.append(authenticator)
        return create_app(settings, store, authenticator=authenticator), authenticator

    yield make
    for authenticator in made:
        await authenticator.aclose()


def client(app: FastAPI, address: str = "192.0.2.10") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://tes.test")


async def test_wrong_passwords_for_one_user_get_429_with_retry_after_and_no_more_checks(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], spy: CheckSpy
) -> None:
    app, _ = app_for()
    async with client(app) as c:
        answers = [await c.get(TASKS, headers=basic("alice", f"guess-{i}")) for i in range(20)]
    statuses = [a.status_code for a in answers]
    assert statuses[:5] == [401] * 5  # auth.login_failures_before_throttle = 5
    assert set(statuses[5:]) == {429}
    throttled = answers[5]
    assert int(throttled.headers["Retry-After"]) >= 1
    assert throttled.json() == {"msg": throttled.json()["msg"], "status_code": 429}
    assert "too many failed logins" in throttled.json()["msg"]
    assert len(spy.threads) == 5  # throttled attempts cost no scrypt run


async def test_another_users_correct_login_is_answered_while_the_flood_is_throttled(
    app_for: Callable[..., tuple[FastAPI, Authenticator]],
) -> None:
    app, _ = app_for()
    async with client(app) as c:
        flood = await asyncio.gather(*(c.get(TASKS, headers=basic("alice", f"guess-{i}")) for i in range(60)))
        assert 429 in {a.status_code for a in flood}
        bob = await c.get(TASKS, headers=basic("bob", "bob-pw"))
        assert bob.status_code == 200, bob.text
        still = await c.get(TASKS, headers=basic("alice", "another-guess"))
        assert still.status_code == 429  # the flood is still throttled when bob got in


async def test_the_throttled_user_gets_in_after_the_delay_and_a_success_resets_the_count(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], clock: FakeClock
) -> None:
    app, _ = app_for(login_throttle_seconds=2.0)
    async with client(app) as c:
        for i in range(5):
            assert (await c.get(TASKS, headers=basic("alice", f"guess-{i}"))).status_code == 401
        blocked = await c.get(TASKS, headers=basic("alice", "alice-pw"))
        assert blocked.status_code == 429 and blocked.headers["Retry-After"] == "2"
        clock.advance(2.0)
        assert (await c.get(TASKS, headers=basic("alice", "alice-pw"))).status_code == 200
        # reset: five more wrong passwords are needed before the next 429
        for i in range(5):
            assert (await c.get(TASKS, headers=basic("alice", f"again-{i}"))).status_code == 401
        assert (await c.get(TASKS, headers=basic("alice", "again-5"))).status_code == 429


async def test_the_delay_doubles_with_each_failure_up_to_the_maximum(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], clock: FakeClock
) -> None:
    app, _ = app_for(login_throttle_seconds=1.0, login_throttle_max_seconds=8.0)
    delays = []
    async with client(app) as c:
        for i in range(4):
            assert (await c.get(TASKS, headers=basic("alice", f"guess-{i}"))).status_code == 401
        for i in range(6):
            answer = await c.get(TASKS, headers=basic("alice", f"more-{i}"))
            assert answer.status_code == 401  # the one attempt let through after the delay fails
            blocked = await c.get(TASKS, headers=basic("alice", "x"))
            delays.append(int(blocked.headers["Retry-After"]))
            clock.advance(delays[-1])
    assert delays == [1, 2, 4, 8, 8, 8]


async def test_a_client_already_logged_in_keeps_working_while_its_user_is_throttled(
    app_for: Callable[..., tuple[FastAPI, Authenticator]],
) -> None:
    app, _ = app_for()
    async with client(app, "192.0.2.1") as owner, client(app, "198.51.100.7") as attacker:
        assert (await owner.get(TASKS, headers=basic("alice", "alice-pw"))).status_code == 200
        for i in range(10):
            await attacker.get(TASKS, headers=basic("alice", f"guess-{i}"))
        assert (await attacker.get(TASKS, headers=basic("alice", "guess"))).status_code == 429
        assert (await owner.get(TASKS, headers=basic("alice", "alice-pw"))).status_code == 200


async def test_one_address_spraying_usernames_is_throttled_and_other_addresses_are_not(
    app_for: Callable[..., tuple[FastAPI, Authenticator]],
) -> None:
    app, _ = app_for(login_address_failures_before_throttle=10)
    async with client(app, "203.0.113.5") as sprayer, client(app, "192.0.2.20") as other:
        statuses = [
            (await sprayer.get(TASKS, headers=basic(f"user{i}", "pw"))).status_code for i in range(15)
        ]
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
        # a real user from that address is throttled too; from another address it is not
        assert (await sprayer.get(TASKS, headers=basic("bob", "bob-pw"))).status_code == 429
        assert (await other.get(TASKS, headers=basic("bob", "bob-pw"))).status_code == 200


async def test_an_ipv6_client_is_counted_by_its_slash_64(
    app_for: Callable[..., tuple[FastAPI, Authenticator]],
) -> None:
    app, _ = app_for(login_address_failures_before_throttle=4)
    for i in range(4):  # a new address of the same /64 for every guess
        async with client(app, f"2001:db8:1:2::{i + 1:x}") as c:
            assert (await c.get(TASKS, headers=basic(f"user{i}", "pw"))).status_code == 401
    async with client(app, "2001:db8:1:2:ffff::9") as c:
        assert (await c.get(TASKS, headers=basic("bob", "bob-pw"))).status_code == 429
    async with client(app, "2001:db8:1:3::1") as c:
        assert (await c.get(TASKS, headers=basic("bob", "bob-pw"))).status_code == 200


async def test_sixty_concurrent_wrong_passwords_run_few_checks_all_on_the_dedicated_pool(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], spy: CheckSpy
) -> None:
    """The issue's scenario: it used to run 60 scrypt checks in the default executor, ahead of the S3
    transfers queued there. Now at most login_failures_before_throttle checks run, none of them in
    the default executor, which stays free."""
    app, _ = app_for()
    async with client(app) as c:
        flood = asyncio.gather(*(c.get(TASKS, headers=basic("alice", f"guess-{i}")) for i in range(60)))
        default_executor_thread = await asyncio.to_thread(lambda: threading.current_thread().name)
        answers = await flood
    assert {a.status_code for a in answers} == {401, 429}
    assert 1 <= len(spy.threads) <= 5
    assert all(name.startswith(POOL_THREAD_PREFIX) for name in spy.threads), spy.threads
    assert not default_executor_thread.startswith(POOL_THREAD_PREFIX)


async def test_concurrent_requests_with_the_same_correct_password_share_one_check(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], spy: CheckSpy
) -> None:
    """A client that starts with 20 parallel requests (Nextflow submitting a burst) is not throttled."""
    app, _ = app_for()
    async with client(app) as c:
        answers = await asyncio.gather(*(c.get(TASKS, headers=basic("alice", "alice-pw")) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert len(spy.threads) == 1


def test_the_address_table_is_bounded() -> None:
    throttle = LoginThrottle(["alice"], ThrottlePolicy(address_failures=1), clock=lambda: 0.0)
    for i in range(MAX_ADDRESSES + 500):
        attempt = throttle.admit(None, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        throttle.done(attempt, ok=False)
    assert throttle.tracked_addresses <= MAX_ADDRESSES


async def test_checks_waiting_beyond_the_queue_get_503_with_retry_after(
    app_for: Callable[..., tuple[FastAPI, Authenticator]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With auth.password_hash_queue = 1, a second check while one is running is refused at once."""
    release = threading.Event()
    started = threading.Event()
    real = passwords.verify_password

    def slow(password: str, hashed: ScryptHash) -> bool:
        started.set()
        release.wait(timeout=60)
        return real(password, hashed)

    monkeypatch.setattr(basic_module, "verify_password", slow)
    app, _ = app_for(password_hash_queue=1)
    async with client(app) as c:
        first = asyncio.create_task(c.get(TASKS, headers=basic("alice", "alice-pw")))
        await asyncio.to_thread(started.wait, 60)
        second = await c.get(TASKS, headers=basic("bob", "bob-pw"))
        release.set()
        assert (await first).status_code == 200
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "5"
    assert "too many password checks" in second.json()["msg"]
