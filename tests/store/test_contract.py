"""The TaskStore contract. Every test runs against each adapter (see conftest.py ``store``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from tesp_api.store.port import (
    DuplicateTask,
    InvalidPageToken,
    ListQuery,
    LogPatch,
    Owner,
    TaskRecord,
    TaskStore,
)
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesExecutorLog, TesOutputFileLog, TesState, TesTask

ALICE = Owner("alice", "https://idp.example")
BOB = Owner("bob", "https://idp.example")
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def make_task(name: str | None = None, tags: dict[str, str] | None = None) -> TesTask:
    return TesTask(
        id=new_task_id(),
        name=name,
        tags=tags,
        executors=[TesExecutor(image="alpine", command=["echo", "hello"])],
    )


async def create(
    store: TaskStore,
    name: str | None = None,
    *,
    owner: Owner | None = None,
    tags: dict[str, str] | None = None,
) -> TaskRecord:
    return await store.create(make_task(name, tags), owner)


async def list_ids(store: TaskStore, **filters: object) -> list[str]:
    page = await store.list(ListQuery(page_size=100, **filters))  # type: ignore[arg-type]
    return [r.id for r in page.records]


# -- create / get -------------------------------------------------------------------------------


async def test_create_returns_a_queued_active_record(store: TaskStore) -> None:
    task = make_task("first")
    record = await store.create(task, ALICE)
    assert record.id == task.id
    assert record.state is TesState.QUEUED
    assert record.active is True
    assert record.owner == ALICE
    assert record.created_at.tzinfo is not None


async def test_get_returns_what_create_stored(store: TaskStore) -> None:
    created = await create(store, "first", owner=ALICE, tags={"project": "x"})
    got = await store.get(created.id)
    assert got is not None
    assert got.task == created.task
    assert (got.state, got.owner, got.seq, got.created_at) == (
        created.state,
        created.owner,
        created.seq,
        created.created_at,
    )


async def test_get_of_unknown_task_is_none(store: TaskStore) -> None:
    assert await store.get(new_task_id()) is None


async def test_get_with_another_owner_is_none(store: TaskStore) -> None:
    created = await create(store, owner=ALICE)
    assert await store.get(created.id, BOB) is None
    assert await store.get(created.id, Owner("alice", "https://other-idp.example")) is None
    assert await store.get(created.id, ALICE) is not None


async def test_create_with_an_existing_id_raises_duplicate_task(store: TaskStore) -> None:
    task = make_task("once")
    await store.create(task, None)
    with pytest.raises(DuplicateTask):
        await store.create(task, None)
    assert await store.count() == 1


async def test_sequence_numbers_increase_with_creation(store: TaskStore) -> None:
    records = [await create(store) for _ in range(3)]
    assert records[0].seq < records[1].seq < records[2].seq


# -- list ------------------------------------------------------------------------------------


async def test_list_is_newest_first(store: TaskStore) -> None:
    records = [await create(store) for _ in range(3)]
    assert await list_ids(store) == [r.id for r in reversed(records)]


async def test_name_prefix_is_a_plain_prefix_not_a_pattern(store: TaskStore) -> None:
    literal = await create(store, "a.*b")
    await create(store, "abc")
    await create(store, "xa.*")
    percent = await create(store, "50%")
    await create(store, "500")
    assert await list_ids(store, name_prefix="a.*") == [literal.id]
    assert await list_ids(store, name_prefix="50%") == [percent.id]


async def test_state_filter(store: TaskStore) -> None:
    queued = await create(store)
    running = await create(store)
    await store.update(running.id, state=TesState.RUNNING)
    assert await list_ids(store, state=TesState.RUNNING) == [running.id]
    assert await list_ids(store, state=TesState.QUEUED) == [queued.id]


async def test_tag_filter_with_value_matches_that_value_only(store: TaskStore) -> None:
    match = await create(store, tags={"project": "p1", "lab": "x"})
    await create(store, tags={"project": "p2"})
    assert await list_ids(store, tags=[("project", "p1")]) == [match.id]


async def test_tag_filter_without_value_matches_any_value(store: TaskStore) -> None:
    first = await create(store, tags={"project": "p1"})
    second = await create(store, tags={"project": ""})
    await create(store, tags={"other": "p1"})
    assert await list_ids(store, tags=[("project", None)]) == [second.id, first.id]
    assert await list_ids(store, tags=[("project", "")]) == [second.id, first.id]


async def test_tag_filter_on_a_missing_key_matches_nothing(store: TaskStore) -> None:
    await create(store, tags={"project": "p1"})
    await create(store)
    assert await list_ids(store, tags=[("absent", None)]) == []


async def test_several_tag_filters_must_all_match(store: TaskStore) -> None:
    both = await create(store, tags={"a": "1", "b": "2"})
    await create(store, tags={"a": "1", "b": "3"})
    await create(store, tags={"a": "1"})
    assert await list_ids(store, tags=[("a", "1"), ("b", "2")]) == [both.id]


async def test_owner_filter(store: TaskStore) -> None:
    mine = await create(store, owner=ALICE)
    await create(store, owner=BOB)
    await create(store, owner=None)
    assert await list_ids(store, owner=ALICE) == [mine.id]
    assert len(await list_ids(store)) == 3


# -- paging ----------------------------------------------------------------------------------


async def collect_pages(
    store: TaskStore,
    page_size: int,
    between: Callable[[], Awaitable[object]] | None = None,
    **filters: object,
) -> list[list[str]]:
    pages: list[list[str]] = []
    token = None
    while True:
        page = await store.list(ListQuery(page_size=page_size, page_token=token, **filters))  # type: ignore[arg-type]
        pages.append([r.id for r in page.records])
        token = page.next_page_token
        if token is None:
            return pages
        if between is not None:
            await between()


async def test_pages_cover_every_task_once_in_order(store: TaskStore) -> None:
    records = [await create(store) for _ in range(7)]
    pages = await collect_pages(store, page_size=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [r.id for r in reversed(records)]


async def test_last_full_page_has_no_next_token(store: TaskStore) -> None:
    for _ in range(4):
        await create(store)
    assert [len(p) for p in await collect_pages(store, page_size=2)] == [2, 2]


async def test_pages_stay_disjoint_while_tasks_are_created(store: TaskStore) -> None:
    before = [await create(store) for _ in range(6)]

    async def create_one() -> None:
        await create(store)

    pages = await collect_pages(store, page_size=2, between=create_one)
    seen = [i for p in pages for i in p]
    assert seen == [r.id for r in reversed(before)]


async def test_max_bytes_ends_a_page_early_with_a_token_and_loses_no_task(store: TaskStore) -> None:
    """Each task's stored JSON is ~2 kB: a 5 kB budget takes two per page, and every task comes once."""
    records = [await create(store, "x" * 2000) for _ in range(5)]
    pages = await collect_pages(store, page_size=100, max_bytes=5000)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [r.id for r in reversed(records)]


async def test_max_bytes_still_gives_one_task_bigger_than_the_budget(store: TaskStore) -> None:
    records = [await create(store, "y" * 5000) for _ in range(2)]
    pages = await collect_pages(store, page_size=100, max_bytes=1000)
    assert pages == [[records[1].id], [records[0].id]]


async def test_paging_applies_the_filters_on_every_page(store: TaskStore) -> None:
    wanted = []
    for _ in range(5):
        wanted.append(await create(store, tags={"keep": "yes"}))
        await create(store, tags={"keep": "no"})
    pages = await collect_pages(store, page_size=2, tags=[("keep", "yes")])
    assert [i for p in pages for i in p] == [r.id for r in reversed(wanted)]


@pytest.mark.parametrize("token", ["garbage", "", "!!!!", base64.urlsafe_b64encode(b"\x00" * 20).decode()])
async def test_garbage_page_token_is_rejected(store: TaskStore, token: str) -> None:
    await create(store)
    with pytest.raises(InvalidPageToken):
        await store.list(ListQuery(page_size=1, page_token=token or "="))


async def test_tampered_page_token_is_rejected(store: TaskStore) -> None:
    for _ in range(3):
        await create(store)
    token = (await store.list(ListQuery(page_size=1))).next_page_token
    assert token is not None
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[7] ^= 1  # move the position by one
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidPageToken):
        await store.list(ListQuery(page_size=1, page_token=forged))


async def test_page_token_of_other_filters_is_rejected(store: TaskStore) -> None:
    for _ in range(3):
        await create(store, owner=ALICE)
    token = (await store.list(ListQuery(page_size=1, owner=ALICE))).next_page_token
    with pytest.raises(InvalidPageToken):
        await store.list(ListQuery(page_size=1, page_token=token, owner=BOB))


# -- update (compare-and-set) ------------------------------------------------------------------------


async def test_update_with_expected_state_changes_the_state(store: TaskStore) -> None:
    created = await create(store)
    updated = await store.update(
        created.id, expected=frozenset({TesState.QUEUED}), state=TesState.INITIALIZING
    )
    assert updated is not None and updated.state is TesState.INITIALIZING
    assert updated.version > created.version
    got = await store.get(created.id)
    assert got is not None and got.state is TesState.INITIALIZING


async def test_update_with_unmet_expectation_writes_nothing(store: TaskStore) -> None:
    created = await create(store)
    result = await store.update(
        created.id,
        expected=frozenset({TesState.RUNNING}),
        state=TesState.COMPLETE,
        log=LogPatch(system_logs=["should not appear"]),
        backend={"job": "x"},
        active=False,
    )
    assert result is None
    got = await store.get(created.id)
    assert got is not None
    assert (got.state, got.active, got.backend, got.log.system_logs) == (TesState.QUEUED, True, {}, None)


async def test_update_of_unknown_task_is_none(store: TaskStore) -> None:
    assert await store.update(new_task_id(), state=TesState.RUNNING) is None


async def test_exactly_one_of_many_concurrent_compare_and_sets_wins(store: TaskStore) -> None:
    created = await create(store)
    results = await asyncio.gather(
        *(
            store.update(
                created.id,
                expected=frozenset({TesState.QUEUED}),
                state=TesState.INITIALIZING,
                log=LogPatch(system_logs=[f"worker {i}"]),
            )
            for i in range(20)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    got = await store.get(created.id)
    assert got is not None and got.log.system_logs == winners[0].log.system_logs


async def test_update_with_lease_owner_requires_holding_the_lease(store: TaskStore) -> None:
    created = await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    assert await store.update(created.id, state=TesState.INITIALIZING, lease_owner="w2") is None
    assert await store.update(created.id, state=TesState.INITIALIZING, lease_owner="w1") is not None


async def test_log_patches_append_and_merge(store: TaskStore) -> None:
    created = await create(store)
    first_output = TesOutputFileLog(url="s3://b/one", path="/out/one", size_bytes="1")
    second_output = TesOutputFileLog(url="s3://b/two", path="/out/two", size_bytes="2")
    await store.update(
        created.id,
        log=LogPatch(
            start_time="2030-01-01T00:00:00Z",
            system_logs=["one"],
            outputs=[first_output],
            metadata={"a": "1"},
            executor_logs={0: TesExecutorLog(exit_code=0, stdout="first")},
        ),
    )
    updated = await store.update(
        created.id,
        log=LogPatch(
            end_time="2030-01-01T00:01:00Z",
            system_logs=["two"],
            outputs=[second_output],
            metadata={"b": "2"},
            executor_logs={0: TesExecutorLog(exit_code=1, stdout="again"), 1: TesExecutorLog(exit_code=0)},
        ),
    )
    got = await store.get(created.id)
    assert got is not None and updated is not None
    for log in (updated.log, got.log):
        assert log.start_time == "2030-01-01T00:00:00Z"
        assert log.end_time == "2030-01-01T00:01:00Z"
        assert log.system_logs == ["one", "two"]
        assert log.outputs == [first_output, second_output]
        assert log.metadata == {"a": "1", "b": "2"}
        assert [(e.exit_code, e.stdout) for e in log.logs] == [(1, "again"), (0, None)]


async def test_backend_keys_are_merged(store: TaskStore) -> None:
    created = await create(store)
    await store.update(created.id, backend={"server": "default", "job": "j1"})
    updated = await store.update(created.id, backend={"job": "j2", "extra": {"n": 1}})
    assert updated is not None
    assert updated.backend == {"server": "default", "job": "j2", "extra": {"n": 1}}
    got = await store.get(created.id)
    assert got is not None and got.backend == updated.backend


async def test_active_can_be_cleared(store: TaskStore) -> None:
    created = await create(store)
    await store.update(created.id, state=TesState.CANCELED, active=False)
    got = await store.get(created.id)
    assert got is not None and (got.state, got.active) == (TesState.CANCELED, False)


# -- leases --------------------------------------------------------------------------------------


async def test_claim_takes_the_oldest_active_task(store: TaskStore) -> None:
    oldest = await create(store)
    await create(store)
    claimed = await store.claim("w1", T0, T0 + timedelta(seconds=30))
    assert claimed is not None and claimed.id == oldest.id
    assert claimed.lease_owner == "w1"
    assert claimed.lease_expires == T0 + timedelta(seconds=30)


async def test_claim_with_nothing_to_claim_is_none(store: TaskStore) -> None:
    assert await store.claim("w1", T0, T0 + timedelta(seconds=30)) is None


async def test_two_workers_never_hold_the_same_task(store: TaskStore) -> None:
    for _ in range(3):
        await create(store)
    claims = await asyncio.gather(*(store.claim(f"w{i}", T0, T0 + timedelta(seconds=30)) for i in range(6)))
    taken = [c.id for c in claims if c is not None]
    assert len(taken) == 3 and len(set(taken)) == 3


async def test_held_lease_is_not_claimed_again(store: TaskStore) -> None:
    await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    assert await store.claim("w2", T0 + timedelta(seconds=29), T0 + timedelta(seconds=60)) is None


async def test_expired_lease_can_be_reclaimed(store: TaskStore) -> None:
    created = await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    reclaimed = await store.claim("w2", T0 + timedelta(seconds=31), T0 + timedelta(seconds=61))
    assert reclaimed is not None and (reclaimed.id, reclaimed.lease_owner) == (created.id, "w2")


async def test_inactive_tasks_are_never_claimed(store: TaskStore) -> None:
    created = await create(store)
    await store.update(created.id, state=TesState.CANCELED, active=False)
    assert await store.claim("w1", T0, T0 + timedelta(seconds=30)) is None


async def test_renew_extends_only_leases_still_held(store: TaskStore) -> None:
    first = await create(store)
    second = await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    await store.claim("w2", T0 + timedelta(seconds=40), T0 + timedelta(seconds=70))  # steals `first`
    held = await store.renew("w1", [first.id, second.id], T0 + timedelta(seconds=90))
    assert held == [second.id]
    got = await store.get(second.id)
    assert got is not None and got.lease_expires == T0 + timedelta(seconds=90)


async def test_released_task_can_be_claimed_at_once(store: TaskStore) -> None:
    created = await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    await store.release("w1", created.id)
    claimed = await store.claim("w2", T0 + timedelta(seconds=1), T0 + timedelta(seconds=31))
    assert claimed is not None and claimed.lease_owner == "w2"


async def test_release_by_another_worker_changes_nothing(store: TaskStore) -> None:
    created = await create(store)
    await store.claim("w1", T0, T0 + timedelta(seconds=30))
    await store.release("w2", created.id)
    got = await store.get(created.id)
    assert got is not None and got.lease_owner == "w1"


# -- count, persistence ------------------------------------------------------------------------


async def test_count(store: TaskStore) -> None:
    assert await store.count() == 0
    for _ in range(3):
        await create(store)
    assert await store.count() == 3


async def test_tasks_survive_close_and_reopen(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    created = await create(store, "kept", owner=ALICE, tags={"k": "v"})
    await store.update(created.id, state=TesState.RUNNING, log=LogPatch(system_logs=["hi"]))
    fresh = await reopen()
    got = await fresh.get(created.id, ALICE)
    assert got is not None
    assert (got.state, got.task.name, got.log.system_logs) == (TesState.RUNNING, "kept", ["hi"])
    assert await fresh.count() == 1
    later = await create(fresh)
    assert later.seq > created.seq


async def test_page_tokens_stay_valid_after_reopen(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    records = [await create(store) for _ in range(3)]
    token = (await store.list(ListQuery(page_size=1))).next_page_token
    fresh = await reopen()
    page = await fresh.list(ListQuery(page_size=5, page_token=token))
    assert [r.id for r in page.records] == [records[1].id, records[0].id]


# -- shared secrets ---------------------------------------------------------------------------------


async def test_a_secret_is_made_once_and_then_always_the_same(store: TaskStore) -> None:
    first = await store.get_or_create_secret("staging")
    assert len(first) == 32
    assert await store.get_or_create_secret("staging") == first
    assert await store.get_or_create_secret("other") != first


async def test_concurrent_first_uses_of_a_secret_agree(store: TaskStore) -> None:
    got = await asyncio.gather(*(store.get_or_create_secret("raced") for _ in range(8)))
    assert len(set(got)) == 1


async def test_a_secret_survives_reopening_the_store(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    first = await store.get_or_create_secret("kept")
    fresh = await reopen()
    assert await fresh.get_or_create_secret("kept") == first
