"""Capacity- and health-aware routing over several real Pulsar servers (docs/quotas.md, "Routing").

Three pulsar-serve processes (REST) per test that needs them, an in-process engine on a SQLite
store; one server is stopped mid-run. Executors run under bubblewrap (no Docker engine here).
Admission (400 for a task that fits no server, strict ``pulsar_server``) goes through the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesp_api.api.app import create_app
from tesp_api.config.settings import PulsarServer, Settings
from tesp_api.engine.engine import Engine
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import engine_settings, submit, wait_for
from tests.engine.slow_http import SlowInputServer
from tests.services.pulsar import LocalPulsar, pulsar_server

pytestmark = [pytest.mark.pulsar]

NAMES = ("east", "west", "north")


@pytest.fixture
def pulsars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPulsar]]:
    with (
        pulsar_server(tmp_path_factory.mktemp("east")) as east,
        pulsar_server(tmp_path_factory.mktemp("west")) as west,
        pulsar_server(tmp_path_factory.mktemp("north")) as north,
    ):
        yield {"east": east, "west": west, "north": north}


def routed_settings(pulsars: dict[str, LocalPulsar], tmp: Path, **per_server: dict[str, Any]) -> Settings:
    settings = engine_settings(next(iter(pulsars.values())).url, tmp)
    settings.pulsar.servers = [
        PulsarServer(name=name, url=server.url, **per_server.get(name, {}))
        for name, server in pulsars.items()
    ]
    settings.pulsar.health.probe_interval = 0.2
    settings.pulsar.health.probe_timeout = 1.0
    settings.pulsar.unreachable_deadline = 30
    return settings


@pytest.fixture
async def started(store: SqliteTaskStore) -> AsyncIterator[list[Engine]]:
    engines: list[Engine] = []
    yield engines
    for engine in engines:
        await engine.stop()


async def start(engines: list[Engine], settings: Settings, store: SqliteTaskStore) -> Engine:
    engine = Engine(settings, store)
    await engine.start()
    engines.append(engine)
    return engine


def sleep_task(seconds: float = 2) -> dict[str, Any]:
    return {"executors": [{"image": "a", "command": ["sleep", str(seconds)]}]}


async def test_tasks_go_to_the_least_loaded_server_counted_in_the_store(
    pulsars: dict[str, LocalPulsar], store: SqliteTaskStore, tmp_path: Path, started: list[Engine]
) -> None:
    settings = routed_settings(pulsars, tmp_path, **{n: {"max_active": 1} for n in NAMES})
    ids = [await submit(store, sleep_task()) for _ in range(4)]
    await start(started, settings, store)
    await start(started, settings, store)  # two workers, one count
    records = [await wait_for(store, tid) for tid in ids]
    assert all(r.state == TesState.COMPLETE for r in records)
    first_three = sorted(
        r.backend["server"] for r in sorted(records, key=lambda r: r.log.start_time or "")[:3]
    )
    assert first_three == sorted(NAMES)  # one each: max_active 1 and the least loaded first


async def test_a_server_at_max_active_gets_no_more_tasks(
    pulsars: dict[str, LocalPulsar], store: SqliteTaskStore, tmp_path: Path, started: list[Engine]
) -> None:
    settings = routed_settings(pulsars, tmp_path, **{n: {"max_active": 1} for n in NAMES})
    ids = [await submit(store, sleep_task(1)) for _ in range(6)]
    await start(started, settings, store)
    records = [await wait_for(store, t) for t in ids]
    assert all(r.state == TesState.COMPLETE for r in records)
    for name in NAMES:  # the tasks of one server never overlapped (start/end times in their logs)
        spans = sorted(
            (r.log.start_time or "", r.log.end_time or "") for r in records if r.backend["server"] == name
        )
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)), (name, spans)


async def test_a_stopped_server_gets_no_new_tasks(
    pulsars: dict[str, LocalPulsar], store: SqliteTaskStore, tmp_path: Path, started: list[Engine]
) -> None:
    settings = routed_settings(pulsars, tmp_path)
    engine = await start(started, settings, store)
    warm = [await submit(store, sleep_task(0.1)) for _ in range(3)]
    assert {(await wait_for(store, t)).backend["server"] for t in warm} == set(NAMES)
    pulsars["north"].stop(timeout=3.0)  # mid-run
    while engine.router.is_up("north"):
        await asyncio.sleep(0.1)
    later = [await submit(store, sleep_task(0.1)) for _ in range(4)]
    records = [await wait_for(store, t) for t in later]
    assert all(r.state == TesState.COMPLETE for r in records)
    assert {r.backend["server"] for r in records} <= {"east", "west"}
    view = engine.router.view().servers  # what it publishes for other processes (GET /admin/servers)
    assert view["north"].up is False and view["east"].up is True


async def test_a_task_not_yet_submitted_moves_off_a_server_that_went_down(
    pulsars: dict[str, LocalPulsar], store: SqliteTaskStore, tmp_path: Path, started: list[Engine]
) -> None:
    settings = routed_settings(pulsars, tmp_path)
    with SlowInputServer() as slow:
        tid = await submit(
            store, {"inputs": [{"path": "/in/x", "url": slow.url}], **sleep_task(0.1)}
        )  # held in INITIALIZING while its input is fetched
        engine = await start(started, settings, store)
        await asyncio.to_thread(slow.requested.wait, 30)
        first = (await store.get(tid)).backend["server"]  # type: ignore[union-attr]
        pulsars[first].stop(timeout=3.0)
        while engine.router.is_up(first):
            await asyncio.sleep(0.1)
        slow.release.set()
        record = await wait_for(store, tid)
    assert record.state == TesState.COMPLETE, record.log.system_logs
    assert record.backend["server"] != first and record.backend["moved_from"] == first
    assert any(f"{first} is down" in line for line in record.log.system_logs or [])
    assert (await store.quota_usage(None)).servers.get(first, 0) == 0


def admission_settings(**server: Any) -> Settings:
    return Settings.model_validate(
        {
            "pulsar": {
                "servers": [
                    {
                        "name": "small",
                        "url": "http://127.0.0.1:9",
                        "max_cpu_cores": 2,
                        "max_ram_gb": 4,
                        **server,
                    },
                    {"name": "big", "url": "http://127.0.0.1:9", "max_cpu_cores": 16, "max_ram_gb": 64},
                ]
            },
            "engine": {"enabled": False},
        }
    )


async def post_task(tmp_path: Path, settings: Settings, body: dict[str, Any]) -> httpx.Response:
    store = SqliteTaskStore(str(tmp_path / "admission.sqlite3"))
    await store.open()
    try:
        app = create_app(settings, store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tes") as client:
            return await client.post("/ga4gh/tes/v1/tasks", json=body)
    finally:
        await store.close()


async def test_a_task_that_fits_no_server_is_refused_naming_the_limit(tmp_path: Path) -> None:
    answer = await post_task(tmp_path, admission_settings(), {"resources": {"cpu_cores": 32}, **sleep_task()})
    assert answer.status_code == 400
    assert "resources.cpu_cores" in answer.text and "max_cpu_cores 16" in answer.text


async def test_a_task_larger_than_its_pinned_server_is_refused(tmp_path: Path) -> None:
    body = {"resources": {"ram_gb": 8, "backend_parameters": {"pulsar_server": "small"}}, **sleep_task()}
    answer = await post_task(tmp_path, admission_settings(), body)
    assert answer.status_code == 400 and "max_ram_gb 4" in answer.text


async def test_a_task_that_fits_some_server_is_accepted(tmp_path: Path) -> None:
    answer = await post_task(tmp_path, admission_settings(), {"resources": {"cpu_cores": 8}, **sleep_task()})
    assert answer.status_code == 200


async def test_strict_backend_parameters_refuse_an_unknown_pulsar_server(tmp_path: Path) -> None:
    params = {"backend_parameters": {"pulsar_server": "nonexistent"}, "backend_parameters_strict": True}
    answer = await post_task(tmp_path, admission_settings(), {"resources": params, **sleep_task()})
    assert answer.status_code == 400
    assert "nonexistent" in answer.text and "pulsar_server" in answer.text


async def test_lenient_backend_parameters_accept_an_unknown_pulsar_server(tmp_path: Path) -> None:
    params = {"backend_parameters": {"pulsar_server": "nonexistent"}}
    answer = await post_task(tmp_path, admission_settings(), {"resources": params, **sleep_task()})
    assert answer.status_code == 200


async def test_a_task_waiting_for_a_full_server_says_so_in_its_full_view(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from tesp_api.engine.routing import Router

    settings = admission_settings(max_active=1)
    settings.pulsar.servers[1].max_active = 1
    store = SqliteTaskStore(str(tmp_path / "full.sqlite3"))
    await store.open()
    try:
        app = create_app(settings, store)
        policy = Router(settings, store, dict, "w1").claim_policy()  # no backends: every server counts as up
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes") as client:
            ids = [
                (await client.post("/ga4gh/tes/v1/tasks", json=sleep_task())).json()["id"] for _ in range(3)
            ]
            now = datetime.now(UTC)
            for _ in range(2):
                assert await store.claim("w1", now, now + timedelta(seconds=30), policy=policy) is not None
            assert await store.claim("w1", now, now + timedelta(seconds=30), policy=policy) is None
            waiting = (await client.get(f"/ga4gh/tes/v1/tasks/{ids[2]}", params={"view": "FULL"})).json()
            servers = (await client.get("/admin/servers")).json()
    finally:
        await store.close()
    assert waiting["state"] == "QUEUED"
    line = waiting["logs"][0]["system_logs"][-1]
    assert line == "waiting for a Pulsar server: small: 1/1 active (max_active); big: 1/1 active (max_active)"
    assert {s["name"]: s["active"] for s in servers["servers"]} == {"small": 1, "big": 1}
    assert servers["health_from"] is None  # no engine in this process


# ---- the order of pulsar.routing (no Pulsar needed: route() is a pure function of settings, health
# and the store's loads; tests/store/test_fair_claim.py runs the same policy through each store's claim)


def class_settings(routing: str) -> Settings:
    """One Slurm-like Pulsar per resource class, listed largest first, plus one without limits."""
    servers = [
        {"name": "any", "url": "http://127.0.0.1:9"},
        {
            "name": "c8_m32",
            "url": "http://127.0.0.1:9",
            "max_cpu_cores": 8,
            "max_ram_gb": 32,
            "max_active": 4,
        },
        {"name": "c2_m4", "url": "http://127.0.0.1:9", "max_cpu_cores": 2, "max_ram_gb": 4, "max_active": 4},
        {"name": "c2_m1", "url": "http://127.0.0.1:9", "max_cpu_cores": 2, "max_ram_gb": 1, "max_active": 4},
    ]
    return Settings.model_validate(
        {"pulsar": {"servers": servers, "routing": routing}, "engine": {"enabled": False}}
    )


def record_asking(**resources: Any) -> Any:
    from datetime import UTC, datetime

    from tesp_api.store.port import TaskRecord
    from tesp_api.tes.models import TesExecutor, TesResources, TesTask

    task = TesTask(
        executors=[TesExecutor(image="alpine", command=["true"])],
        resources=TesResources(**resources) if resources else None,
    )
    return TaskRecord(
        id="t", state=TesState.QUEUED, task=task, owner=None, created_at=datetime.now(UTC), seq=1
    )


def route_of(
    routing: str, loads: dict[str, int] | None = None, down: str | None = None, **resources: Any
) -> list[str]:
    from tesp_api.engine.routing import Router

    router = Router(class_settings(routing), SqliteTaskStore(":memory:"), dict, "w1")
    if down is not None:
        router.health[down].up = False
    return list(router.route(record_asking(**resources), loads or {}))


def test_tightest_fit_puts_the_smallest_class_that_fits_first() -> None:
    assert route_of("tightest_fit", cpu_cores=2, ram_gb=1) == ["c2_m1", "c2_m4", "c8_m32", "any"]
    assert route_of("tightest_fit", cpu_cores=2, ram_gb=3) == ["c2_m4", "c8_m32", "any"]
    assert route_of("tightest_fit", cpu_cores=4) == ["c8_m32", "any"]


def test_tightest_fit_counts_a_server_without_limits_as_the_largest() -> None:
    assert route_of("tightest_fit", cpu_cores=16) == ["any"]
    assert route_of("tightest_fit")[-1] == "any"


def test_tightest_fit_passes_over_a_full_or_down_class_for_the_next_larger() -> None:
    assert route_of("tightest_fit", {"c2_m1": 4}, cpu_cores=2, ram_gb=1)[0] == "c2_m4"
    assert route_of("tightest_fit", down="c2_m1", cpu_cores=2, ram_gb=1)[0] == "c2_m4"


def test_tightest_fit_breaks_a_tie_of_limits_by_load() -> None:
    settings = class_settings("tightest_fit")
    settings.pulsar.servers[2].max_ram_gb = 1  # c2_m4 now declares what c2_m1 does
    from tesp_api.engine.routing import Router

    router = Router(settings, SqliteTaskStore(":memory:"), dict, "w1")
    order = router.route(record_asking(cpu_cores=2, ram_gb=1), {"c2_m4": 1, "c2_m1": 3})
    assert list(order)[:2] == ["c2_m4", "c2_m1"]


def test_least_loaded_stays_the_default_and_ignores_the_classes_sizes() -> None:
    assert Settings().pulsar.routing == "least_loaded"
    # capacity: max_active 4 each, "any" engine.max_running_tasks (1000): the largest class is the least loaded
    loads = {"any": 900, "c8_m32": 1, "c2_m4": 2, "c2_m1": 3}
    assert route_of("least_loaded", loads, cpu_cores=2, ram_gb=1)[0] == "c8_m32"


def test_tightest_fit_still_sends_a_pinned_task_to_its_server_only() -> None:
    pinned = route_of("tightest_fit", cpu_cores=2, ram_gb=1, backend_parameters={"pulsar_server": "any"})
    assert pinned == ["any"]
