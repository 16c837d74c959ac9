"""The callback outbox and retention, the same on every store (SQLite and MongoDB).

An event is written with the state change itself (create -> QUEUED, update with a new state), only
for tasks with a callback_url; only the oldest undelivered event of a task can be claimed (state
order), under a lease; retention deletes ended tasks without undelivered events, in bounded batches.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from tesp_api.store.port import TaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesState, TesTask

URL = "https://hooks.example.org/tes"
RUNNING_FROM = frozenset({TesState.QUEUED, TesState.INITIALIZING})


def task(callback_url: str | None = URL) -> TesTask:
    return TesTask(
        id=new_task_id(),
        name="t",
        executors=[TesExecutor(image="alpine", command=["true"])],
        callback_url=callback_url,
    )


def now() -> datetime:
    return datetime.now(UTC)


async def claim_all(store: TaskStore, worker: str = "w1", limit: int = 100) -> list[object]:
    return list(await store.claim_callbacks(worker, now(), now() + timedelta(seconds=60), limit))


async def test_create_writes_a_queued_event_carrying_the_basic_view(store: TaskStore) -> None:
    record = await store.create(task(), None)
    (event,) = await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 10)
    assert (event.task_id, event.state, event.url) == (record.id, TesState.QUEUED, URL)
    body = json.loads(event.payload)
    assert body["id"] == record.id and body["state"] == "QUEUED" and body["callback_url"] == URL
    assert body["executors"] == [{"image": "alpine", "command": ["true"]}]  # BASIC: more than MINIMAL
    assert event.id and event.attempts == 0


async def test_a_task_without_callback_url_writes_no_event(store: TaskStore) -> None:
    record = await store.create(task(callback_url=None), None)
    await store.update(record.id, expected=frozenset({TesState.QUEUED}), state=TesState.RUNNING)
    assert await store.pending_callbacks() == 0


async def test_each_state_change_writes_one_event_and_a_same_state_update_none(store: TaskStore) -> None:
    record = await store.create(task(), None)
    await store.update(record.id, state=TesState.INITIALIZING)
    await store.update(record.id, state=TesState.INITIALIZING)  # no change of state: no event
    await store.update(record.id, backend={"x": 1})  # no state at all: no event
    await store.update(record.id, state=TesState.RUNNING)
    assert await store.pending_callbacks() == 3


async def test_a_failed_compare_and_set_writes_no_event(store: TaskStore) -> None:
    record = await store.create(task(), None)
    assert (
        await store.update(record.id, expected=frozenset({TesState.RUNNING}), state=TesState.COMPLETE) is None
    )
    assert await store.pending_callbacks() == 1  # QUEUED only


async def test_only_the_oldest_event_of_a_task_is_claimable_so_states_arrive_in_order(
    store: TaskStore,
) -> None:
    record = await store.create(task(), None)
    await store.update(record.id, state=TesState.INITIALIZING)
    await store.update(record.id, state=TesState.RUNNING)
    seen: list[TesState] = []
    for _ in range(3):
        events = await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 10)
        assert len(events) == 1  # the head only, although three are due
        seen.append(events[0].state)
        assert await store.finish_callback("w1", events[0])
    assert seen == [TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING]
    assert await store.pending_callbacks() == 0


async def test_a_leased_event_is_nobody_elses_until_the_lease_expires(store: TaskStore) -> None:
    await store.create(task(), None)
    (event,) = await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 10)
    assert await store.claim_callbacks("w2", now(), now() + timedelta(seconds=60), 10) == []
    later = now() + timedelta(seconds=61)
    (again,) = await store.claim_callbacks("w2", later, later + timedelta(seconds=60), 10)
    assert again.id == event.id  # the same message (webhook-id) after a crashed deliverer
    assert not await store.finish_callback("w1", event)  # w1 lost it: its ack is refused
    assert await store.finish_callback("w2", again)


async def test_a_retried_event_waits_for_its_next_attempt_and_counts_attempts(store: TaskStore) -> None:
    await store.create(task(), None)
    (event,) = await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 10)
    retry_at = now() + timedelta(seconds=30)
    assert await store.retry_callback("w1", event, retry_at, "HTTP 503")
    assert await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 10) == []
    (again,) = await store.claim_callbacks("w1", retry_at, retry_at + timedelta(seconds=60), 10)
    assert again.id == event.id and again.attempts == 1


async def test_events_of_different_tasks_are_claimed_together(store: TaskStore) -> None:
    for _ in range(3):
        await store.create(task(), None)
    assert len(await claim_all(store)) == 3
    assert len(await store.claim_callbacks("w1", now(), now() + timedelta(seconds=60), 2)) == 0


async def test_events_survive_reopening_the_store(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    record = await store.create(task(), None)
    await store.update(record.id, state=TesState.CANCELED)
    fresh = await reopen()
    assert await fresh.pending_callbacks() == 2


async def test_recording_can_be_narrowed_to_some_states(store: TaskStore) -> None:
    store.record_callbacks_for(frozenset({TesState.COMPLETE}))
    record = await store.create(task(), None)
    await store.update(record.id, state=TesState.RUNNING)
    await store.update(record.id, state=TesState.COMPLETE)
    (event,) = await claim_all(store)
    assert event.state == TesState.COMPLETE  # type: ignore[attr-defined]


async def test_the_named_lease_has_one_holder_at_a_time(store: TaskStore) -> None:
    t0 = now()
    assert await store.take_lease("sweep", "a", t0, t0 + timedelta(seconds=60))
    assert not await store.take_lease("sweep", "b", t0, t0 + timedelta(seconds=60))
    assert await store.take_lease("sweep", "a", t0, t0 + timedelta(seconds=60))  # renewing is fine
    later = t0 + timedelta(seconds=61)
    assert await store.take_lease("sweep", "b", later, later + timedelta(seconds=60))
    assert not await store.take_lease("sweep", "a", later, later + timedelta(seconds=60))


async def finish(store: TaskStore, task_id: str, state: TesState = TesState.COMPLETE) -> None:
    await store.update(task_id, state=state, active=False)


async def test_retention_deletes_ended_tasks_in_bounded_batches(store: TaskStore) -> None:
    ended = [(await store.create(task(callback_url=None), None)).id for _ in range(5)]
    for task_id in ended:
        await finish(store, task_id)
    kept = (await store.create(task(callback_url=None), None)).id  # still QUEUED
    cutoff = now() + timedelta(seconds=1)
    first = await store.delete_finished(cutoff, 3)
    second = await store.delete_finished(cutoff, 3)
    assert len(first) == 3 and len(second) == 2
    assert sorted(first + second) == sorted(ended)
    assert await store.delete_finished(cutoff, 3) == []
    for task_id in ended:
        assert await store.get(task_id) is None
    assert await store.get(kept) is not None


async def test_retention_keeps_tasks_that_ended_after_the_cutoff(store: TaskStore) -> None:
    record = await store.create(task(callback_url=None), None)
    cutoff = now() - timedelta(seconds=1)
    await finish(store, record.id)
    assert await store.delete_finished(cutoff, 10) == []


async def test_retention_keeps_a_final_task_the_engine_has_not_released(store: TaskStore) -> None:
    record = await store.create(task(callback_url=None), None)
    await store.update(record.id, state=TesState.CANCELED)  # active: its Pulsar job is not cleaned yet
    assert await store.delete_finished(now() + timedelta(seconds=1), 10) == []


async def test_retention_keeps_a_task_with_undelivered_callbacks(store: TaskStore) -> None:
    record = await store.create(task(), None)
    await finish(store, record.id)
    assert await store.delete_finished(now() + timedelta(seconds=1), 10) == []
    for _ in range(2):
        (event,) = await claim_all(store)
        await store.finish_callback("w1", event)  # type: ignore[arg-type]
    assert await store.delete_finished(now() + timedelta(seconds=1), 10) == [record.id]
