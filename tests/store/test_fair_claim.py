"""Contract: fair claiming with quotas (docs/quotas.md), on every store adapter (SQLite, MongoDB).

A claim of a QUEUED task goes round robin over the owners with waiting tasks and respects the
owners' and servers' limits, decided in the store; the counts follow every state change."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from tesp_api.store.port import ClaimPolicy, Owner, TaskRecord, TaskStore
from tesp_api.tes.models import TesExecutor, TesState, TesTask

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
ALICE, BOB, CAROL = Owner("alice", "https://idp"), Owner("bob", "https://idp"), Owner("carol", "https://idp")


def new_task(name: str = "t") -> TesTask:
    return TesTask(id=str(uuid.uuid4()), name=name, executors=[TesExecutor(image="alpine", command=["true"])])


async def queue(store: TaskStore, owner: Owner | None, n: int) -> list[str]:
    return [(await store.create(new_task(), owner)).id for _ in range(n)]


async def claim(store: TaskStore, policy: ClaimPolicy | None = None, worker: str = "w1") -> TaskRecord | None:
    return await store.claim(worker, T0, T0 + LEASE, policy=policy)


async def test_a_user_with_one_task_is_served_before_another_users_backlog_drains(store: TaskStore) -> None:
    backlog = await queue(store, ALICE, 20)
    (bobs,) = await queue(store, BOB, 1)
    first, second = await claim(store), await claim(store)
    assert first is not None and second is not None
    assert {first.id, second.id} == {backlog[0], bobs}


async def test_claims_alternate_between_owners_with_waiting_tasks(store: TaskStore) -> None:
    await queue(store, ALICE, 4)
    await queue(store, BOB, 4)
    owners = []
    for _ in range(6):
        record = await claim(store)
        assert record is not None and record.owner is not None
        owners.append(record.owner.subject)
    assert owners in (["alice", "bob"] * 3, ["bob", "alice"] * 3)


async def test_one_owners_tasks_are_claimed_oldest_first(store: TaskStore) -> None:
    ids = await queue(store, ALICE, 3)
    claimed = [await claim(store) for _ in range(3)]
    assert [c.id for c in claimed if c is not None] == ids


async def test_tasks_over_the_owners_limit_stay_queued(store: TaskStore) -> None:
    await queue(store, ALICE, 3)
    policy = ClaimPolicy(max_active_per_owner=2)
    assert await claim(store, policy) is not None
    assert await claim(store, policy) is not None
    assert await claim(store, policy) is None
    usage = await store.quota_usage(ALICE)
    assert (usage.owner_active, usage.owner_queued) == (2, 1)


async def test_a_per_user_override_replaces_the_default_limit(store: TaskStore) -> None:
    await queue(store, ALICE, 3)
    await queue(store, BOB, 3)
    policy = ClaimPolicy(max_active_per_owner=1, owner_overrides={"bob": 2})
    claimed = [r for r in [await claim(store, policy) for _ in range(5)] if r is not None]
    subjects = sorted(r.owner.subject for r in claimed if r.owner is not None)
    assert subjects == ["alice", "bob", "bob"]


async def test_a_slot_is_given_back_when_the_task_ends(store: TaskStore) -> None:
    await queue(store, ALICE, 2)
    policy = ClaimPolicy(max_active_per_owner=1)
    first = await claim(store, policy)
    assert first is not None and await claim(store, policy) is None
    await store.update(first.id, state=TesState.INITIALIZING, lease_owner="w1")
    await store.update(first.id, state=TesState.RUNNING, lease_owner="w1")
    assert (await store.quota_usage(ALICE)).owner_active == 1
    await store.update(first.id, state=TesState.COMPLETE, lease_owner="w1")
    assert (await store.quota_usage(ALICE)).owner_active == 0
    assert await claim(store, policy) is not None


async def test_a_cancelled_waiting_task_leaves_the_queue(store: TaskStore) -> None:
    (only,) = await queue(store, ALICE, 1)
    await store.update(only, expected=frozenset({TesState.QUEUED}), state=TesState.CANCELED)
    assert (await store.quota_usage(ALICE)).owner_queued == 0
    cleanup = await claim(store, ClaimPolicy(max_active_per_owner=1))
    assert cleanup is not None and cleanup.state == TesState.CANCELED  # still claimed, to clean up
    assert (await store.quota_usage(ALICE)).owner_active == 0


async def test_a_task_under_way_is_claimed_again_whatever_the_limits(store: TaskStore) -> None:
    await queue(store, ALICE, 2)
    policy = ClaimPolicy(max_active_per_owner=1)
    first = await claim(store, policy)
    assert first is not None
    await store.update(first.id, state=TesState.INITIALIZING, lease_owner="w1")
    later = T0 + LEASE + timedelta(seconds=1)  # w1 died: its lease expired
    again = await store.claim("w2", later, later + LEASE, policy=policy)
    assert again is not None and again.id == first.id and again.lease_owner == "w2"
    assert await store.claim("w3", later, later + LEASE, policy=policy) is None  # alice is at her limit


def route_to(*names: str) -> Callable[[TaskRecord, Mapping[str, int]], Sequence[str]]:
    return lambda record, loads: list(names)


async def test_the_claim_records_the_server_the_policy_chose(store: TaskStore) -> None:
    await queue(store, ALICE, 1)
    record = await claim(store, ClaimPolicy(route=route_to("east", "west")))
    assert record is not None and record.backend["server"] == "east"
    stored = await store.get(record.id)
    assert stored is not None and stored.backend["server"] == "east"
    assert (await store.quota_usage(None)).servers.get("east") == 1


async def test_a_full_server_is_passed_over_for_the_next_candidate(store: TaskStore) -> None:
    await queue(store, ALICE, 3)
    policy = ClaimPolicy(server_limits={"east": 1, "west": 1}, route=route_to("east", "west"))
    servers = [r.backend["server"] if r else None for r in [await claim(store, policy) for _ in range(3)]]
    assert servers == ["east", "west", None]


async def test_a_task_no_server_can_take_stays_queued(store: TaskStore) -> None:
    (only,) = await queue(store, ALICE, 1)
    assert await claim(store, ClaimPolicy(route=route_to())) is None
    stored = await store.get(only)
    assert stored is not None and stored.state == TesState.QUEUED and stored.lease_owner is None


async def test_the_routing_callback_sees_the_stores_load_per_server(store: TaskStore) -> None:
    await queue(store, ALICE, 3)
    seen: list[dict[str, int]] = []

    def least_loaded(record: TaskRecord, loads: Mapping[str, int]) -> Sequence[str]:
        seen.append(dict(loads))
        return sorted(["east", "west"], key=lambda n: (loads.get(n, 0), n))

    servers = [
        r.backend["server"]
        for r in [await claim(store, ClaimPolicy(route=least_loaded)) for _ in range(3)]
        if r
    ]
    assert servers == ["east", "west", "east"]
    assert seen[-1] == {"east": 1, "west": 1}


async def test_racing_claims_never_pass_the_owners_limit(store: TaskStore) -> None:
    await queue(store, ALICE, 8)
    policy = ClaimPolicy(max_active_per_owner=3)
    results = await asyncio.gather(*(claim(store, policy, worker=f"w{i}") for i in range(8)))
    assert len([r for r in results if r is not None]) == 3
    assert (await store.quota_usage(ALICE)).owner_active == 3


async def test_the_counts_survive_a_reopen(
    store: TaskStore, reopen: Callable[[], Awaitable[TaskStore]]
) -> None:
    await queue(store, ALICE, 3)
    assert await claim(store, ClaimPolicy(route=route_to("east"))) is not None
    fresh = await reopen()
    usage = await fresh.quota_usage(ALICE)
    assert (usage.owner_active, usage.owner_queued, usage.servers.get("east")) == (1, 2, 1)
    assert await fresh.claim("w9", T0, T0 + LEASE, policy=ClaimPolicy(max_active_per_owner=1)) is None


async def test_tasks_without_an_owner_share_one_queue(store: TaskStore) -> None:
    await queue(store, None, 2)
    await queue(store, CAROL, 1)
    owners = [r.owner for r in [await claim(store) for _ in range(3)] if r is not None]
    assert len(owners) == 3 and owners.count(None) == 2


def tightest_fit_policy(store: TaskStore) -> ClaimPolicy:
    """The engine's own policy (engine/routing.py) with pulsar.routing = "tightest_fit": a Slurm
    manager per resource class (1 slot each) plus one server without limits. No backends: every
    server counts as up."""
    from tesp_api.config.settings import Settings
    from tesp_api.engine.routing import Router

    url = "http://127.0.0.1:9"
    servers = [
        {"name": "slurm", "url": url},
        {"name": "c2_m4", "url": url, "max_cpu_cores": 2, "max_ram_gb": 4, "max_active": 1},
        {"name": "c2_m1", "url": url, "max_cpu_cores": 2, "max_ram_gb": 1, "max_active": 1},
    ]
    settings = Settings.model_validate({"pulsar": {"servers": servers, "routing": "tightest_fit"}})
    return Router(settings, store, dict, "w1").claim_policy()


async def queue_asking(store: TaskStore, n: int, **resources: object) -> list[str]:
    from tesp_api.tes.models import TesResources

    ids = []
    for _ in range(n):
        task = new_task()
        task.resources = TesResources.model_validate(resources)
        ids.append((await store.create(task, ALICE)).id)
    return ids


async def test_a_tightest_fit_claim_gives_each_task_the_smallest_class_with_room(store: TaskStore) -> None:
    await queue_asking(store, 4, cpu_cores=2, ram_gb=1)
    policy = tightest_fit_policy(store)
    servers = [r.backend["server"] if r else None for r in [await claim(store, policy) for _ in range(4)]]
    assert servers == ["c2_m1", "c2_m4", "slurm", "slurm"]
    assert (await store.quota_usage(None)).servers == {"c2_m1": 1, "c2_m4": 1, "slurm": 2}


async def test_a_tightest_fit_claim_skips_the_classes_a_task_does_not_fit(store: TaskStore) -> None:
    await queue_asking(store, 1, cpu_cores=2, ram_gb=3)
    await queue_asking(store, 1, cpu_cores=4)
    policy = tightest_fit_policy(store)
    first, second = await claim(store, policy), await claim(store, policy)
    assert first is not None and second is not None
    assert (first.backend["server"], second.backend["server"]) == ("c2_m4", "slurm")


async def test_a_class_freed_by_a_final_task_is_the_first_choice_again(store: TaskStore) -> None:
    await queue_asking(store, 3, cpu_cores=2, ram_gb=1)
    policy = tightest_fit_policy(store)
    first = await claim(store, policy)
    assert first is not None and first.backend["server"] == "c2_m1"
    await store.update(first.id, state=TesState.COMPLETE, lease_owner="w1")
    again = await claim(store, policy)
    assert again is not None and again.backend["server"] == "c2_m1"
