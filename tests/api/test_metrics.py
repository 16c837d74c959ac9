"""GET /metrics (Prometheus text format): the names of docs/metrics.md, the task gauge read from the
store, counters fed by the instrumented store, the Pulsar client and the transfer code."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tesp_api.api.app import create_app
from tesp_api.auth.passwords import hash_password
from tesp_api.metrics import instrument, pulsar_request
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesFileType
from tesp_api.transfer.mux import TransferMux
from tests.api.conftest import BASE, assert_tes_error, make_settings, task_body

DOCUMENTED = [
    "tesp_tasks",
    "tesp_tasks_created_total",
    "tesp_tasks_finished_total",
    "tesp_task_duration_seconds",
    "tesp_pulsar_requests_total",
    "tesp_pulsar_request_seconds",
    "tesp_transfer_bytes_total",
    "tesp_amqp_messages_total",
]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def metrics_client(store: SqliteTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    """The app as `tesp-api serve` builds it: around the instrumented store."""
    app = create_app(make_settings(), instrument(store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        yield c


async def scrape(client: httpx.AsyncClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_every_documented_metric_is_exposed(metrics_client: httpx.AsyncClient) -> None:
    text = (await metrics_client.get("/metrics")).text
    for name in DOCUMENTED:
        assert f"# TYPE {name} " in text, name


async def test_the_task_gauge_counts_the_tasks_in_the_store_by_state(
    metrics_client: httpx.AsyncClient,
) -> None:
    ids = [(await metrics_client.post(f"{BASE}/tasks", json=task_body())).json()["id"] for _ in range(3)]
    await metrics_client.post(f"{BASE}/tasks/{ids[0]}:cancel")
    gauge = (await scrape(metrics_client))["tesp_tasks"]
    assert gauge[(("state", "QUEUED"),)] == 2
    assert gauge[(("state", "CANCELED"),)] == 1
    assert gauge[(("state", "RUNNING"),)] == 0


async def test_creates_are_counted(metrics_client: httpx.AsyncClient) -> None:
    before = sample("tesp_tasks_created_total")
    for _ in range(2):
        await metrics_client.post(f"{BASE}/tasks", json=task_body())
    await metrics_client.post(f"{BASE}/tasks", json={"executors": []})  # refused: not counted
    assert sample("tesp_tasks_created_total") == before + 2


async def test_a_task_finished_is_counted_once_with_its_duration(metrics_client: httpx.AsyncClient) -> None:
    finished = sample("tesp_tasks_finished_total", state="CANCELED")
    durations = sample("tesp_task_duration_seconds_count")
    task_id = (await metrics_client.post(f"{BASE}/tasks", json=task_body())).json()["id"]
    await metrics_client.post(f"{BASE}/tasks/{task_id}:cancel")
    await metrics_client.post(f"{BASE}/tasks/{task_id}:cancel")  # already final: no second count
    assert sample("tesp_tasks_finished_total", state="CANCELED") == finished + 1
    assert sample("tesp_task_duration_seconds_count") == durations + 1


async def test_metrics_can_be_turned_off(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async with client_for(make_settings(api={"metrics": False})) as client:
        assert_tes_error(await client.get("/metrics"), 404)


async def test_metrics_are_protected_like_service_info(client_for: Callable[..., httpx.AsyncClient]) -> None:
    user = {"username": "ops", "password_hash": hash_password("ops-pass", log2_n=10)}
    private = make_settings(auth={"mode": "basic", "users": [user], "service_info_public": False})
    async with client_for(private) as client:
        assert_tes_error(await client.get("/metrics"), 401)
        ok = await client.get("/metrics", auth=("ops", "ops-pass"))
        assert ok.status_code == 200
    public = make_settings(auth={"mode": "basic", "users": [user]})  # service_info_public: default true
    async with client_for(public) as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_the_metrics_are_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_the_state_count_reads_an_index_not_the_tasks(store: SqliteTaskStore, tmp_path: Path) -> None:
    # "Cheap at 100k tasks": the GROUP BY is answered from the tasks_by_state index alone.
    conn = sqlite3.connect(tmp_path / "tasks.sqlite3")
    try:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute("EXPLAIN QUERY PLAN SELECT state, count(*) FROM tasks GROUP BY state")
        )
    finally:
        conn.close()
    assert "COVERING INDEX tasks_by_state" in plan, plan


def test_a_pulsar_request_is_counted_by_outcome_and_timed() -> None:
    before = {
        o: sample("tesp_pulsar_requests_total", server="m1", outcome=o)
        for o in ("ok", "server_error", "error")
    }
    timed = sample("tesp_pulsar_request_seconds_count", server="m1")
    with pulsar_request("m1") as seen:
        seen.status = 200
    with pulsar_request("m1") as seen:
        seen.status = 503
    with pytest.raises(ConnectionError), pulsar_request("m1"):
        raise ConnectionError("refused")
    for outcome in ("ok", "server_error", "error"):
        assert sample("tesp_pulsar_requests_total", server="m1", outcome=outcome) == before[outcome] + 1
    assert sample("tesp_pulsar_request_seconds_count", server="m1") == timed + 3


async def test_staged_bytes_are_counted_by_scheme_and_direction(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_bytes(b"x" * 1000)
    mux = TransferMux(make_settings(transfer={"allowed_dirs": [str(data)]}).transfer)
    down, up = (
        sample("tesp_transfer_bytes_total", scheme="file", direction="download"),
        sample("tesp_transfer_bytes_total", scheme="file", direction="upload"),
    )
    await mux.download(f"file://{data}/in.txt", tmp_path / "job" / "in.txt", TesFileType.FILE)
    (tmp_path / "job" / "out.txt").write_bytes(b"y" * 300)
    await mux.upload(tmp_path / "job" / "out.txt", f"file://{data}/out.txt", TesFileType.FILE)
    assert sample("tesp_transfer_bytes_total", scheme="file", direction="download") == down + 1000
    assert sample("tesp_transfer_bytes_total", scheme="file", direction="upload") == up + 300
