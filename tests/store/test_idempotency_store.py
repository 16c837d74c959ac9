"""Idempotency keys in every store adapter: a create with a key the owner used before returns the
first task, atomically with the task itself (contract suite: runs on SQLite and MongoDB)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from tesp_api.store.port import IdempotencyConflict, IdempotencyKey, Owner, TaskStore
from tesp_api.store.records import utc_now
from tests.store.test_contract import make_task

ALICE = Owner("alice", "https://issuer.test")
BOB = Owner("bob", "https://issuer.test")


def key(name: str = "k-1", fingerprint: str = "body-1", *, expired: bool = False) -> IdempotencyKey:
    expires = utc_now() + (timedelta(seconds=-1) if expired else timedelta(hours=24))
    return IdempotencyKey(name, fingerprint, expires)


async def test_a_second_create_with_the_same_key_and_body_returns_the_first_task(store: TaskStore) -> None:
    first = await store.create(make_task(), ALICE, idempotency=key())
    again = await store.create(make_task(), ALICE, idempotency=key())
    assert again.id == first.id
    assert await store.count() == 1


async def test_the_same_key_with_another_body_is_a_conflict_and_writes_nothing(store: TaskStore) -> None:
    await store.create(make_task(), ALICE, idempotency=key())
    with pytest.raises(IdempotencyConflict):
        await store.create(make_task(), ALICE, idempotency=key(fingerprint="body-2"))
    assert await store.count() == 1


async def test_keys_are_scoped_to_the_owner(store: TaskStore) -> None:
    a = await store.create(make_task(), ALICE, idempotency=key())
    b = await store.create(make_task(), BOB, idempotency=key(fingerprint="body-2"))
    anonymous = await store.create(make_task(), None, idempotency=key())
    assert len({a.id, b.id, anonymous.id}) == 3


async def test_an_expired_key_makes_a_new_task(store: TaskStore) -> None:
    first = await store.create(make_task(), ALICE, idempotency=key(expired=True))
    again = await store.create(make_task(), ALICE, idempotency=key(fingerprint="body-2"))
    assert again.id != first.id
    assert await store.count() == 2


async def test_concurrent_creates_with_one_key_make_one_task(store: TaskStore) -> None:
    records = await asyncio.gather(*(store.create(make_task(), ALICE, idempotency=key()) for _ in range(20)))
    assert len({r.id for r in records}) == 1
    assert await store.count() == 1


async def test_a_key_survives_a_restart_of_the_store(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    first = await store.create(make_task(), ALICE, idempotency=key())
    fresh = await reopen()
    assert (await fresh.create(make_task(), ALICE, idempotency=key())).id == first.id


async def test_the_first_task_returned_again_is_the_stored_one(store: TaskStore) -> None:
    first = await store.create(make_task(name="first"), ALICE, idempotency=key())
    again = await store.create(make_task(name="second"), ALICE, idempotency=key())
    assert (again.id, again.task.name, again.owner) == (first.id, "first", ALICE)
