"""Process snapshots (tesp_api/store/snapshots.py) on every store: what one process publishes, another
process reads, through the store they share (SQLite file, MongoDB database)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from tesp_api.metrics import InstrumentedStore
from tesp_api.store.port import TaskStore
from tesp_api.store.snapshots import snapshots_of
from tests.store.conftest import StoreMaker


async def test_a_store_without_snapshots_reads_none_yet(store: TaskStore) -> None:
    snapshots = snapshots_of(store)
    assert snapshots is not None
    assert await snapshots.read("pulsar_health") == []


async def test_a_publication_replaces_the_holders_previous_one_and_keeps_the_others(store: TaskStore) -> None:
    snapshots = snapshots_of(store)
    assert snapshots is not None
    first = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    await snapshots.publish("pulsar_health", "w1", {"n": 1}, first)
    await snapshots.publish("pulsar_health", "w2", {"n": 2}, first)
    await snapshots.publish("pulsar_health", "w1", {"n": 3}, first + timedelta(seconds=10))
    await snapshots.publish("other", "w1", {"n": 4}, first)
    read = {s.holder: s for s in await snapshots.read("pulsar_health")}
    assert {h: dict(s.payload) for h, s in read.items()} == {"w1": {"n": 3}, "w2": {"n": 2}}
    assert read["w1"].published_at == first + timedelta(seconds=10)


async def test_another_process_reads_what_one_published(
    store: TaskStore, store_maker: StoreMaker, opened_stores: list[TaskStore]
) -> None:
    """Two store objects on one file / database, as an engine process and an API process have."""
    engine_side = snapshots_of(store)
    api_store = store_maker()
    await api_store.open()
    opened_stores.append(api_store)
    api_side = snapshots_of(InstrumentedStore(api_store))  # the API's store is wrapped by metrics
    assert engine_side is not None and api_side is not None
    await engine_side.publish("pulsar_health", "engine-1", {"up": True}, datetime.now(UTC))
    (snapshot,) = await api_side.read("pulsar_health")
    assert (snapshot.holder, dict(snapshot.payload)) == ("engine-1", {"up": True})


async def test_a_snapshot_outlives_a_reopen(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    snapshots = snapshots_of(store)
    assert snapshots is not None
    await snapshots.publish("pulsar_health", "w1", {"n": 1}, datetime.now(UTC))
    fresh = snapshots_of(await reopen())
    assert fresh is not None
    assert [s.holder for s in await fresh.read("pulsar_health")] == ["w1"]


async def test_an_oversized_payload_is_refused(store: TaskStore) -> None:
    snapshots = snapshots_of(store)
    assert snapshots is not None
    with pytest.raises(ValueError, match="snapshot payload"):
        await snapshots.publish("pulsar_health", "w1", {"x": "y" * 70_000}, datetime.now(UTC))
    assert await snapshots.read("pulsar_health") == []
