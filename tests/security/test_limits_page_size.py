"""The issue's scenario against a real ``tesp-api serve``: 15 tasks with 10 MB of input content
each, then ``GET /tasks?view=FULL&page_size=20``. It used to answer 151 MB in one page while the
server grew by 700 MiB; now every page stays under ``api.max_page_bytes`` (it ends early with a
next_page_token), the pages together still give every task once, and the server's peak memory while
listing grows by a bounded amount. Sizes are asserted, never times.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.store.sqlite import SqliteTaskStore
from tests.services.tesp_serve import tesp_serve_process

BASE = "/ga4gh/tes/v1"
MIB = 1024 * 1024
CONTENT_BYTES = 10_000_000
TASKS = 15
PAGE_CAP = 16 * MIB


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    """Linux resets VmHWM to the current RSS on "5" > clear_refs (our own child may be reset)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``tesp-api serve`` (engine off: only the API is under test) on 127.0.0.1; yields (url, pid)."""
    limits = {
        "TESP_API_DB__SQLITE_SYNCHRONOUS": "NORMAL",
        "TESP_API_API__MAX_BODY_BYTES": str(16 * MIB),
        "TESP_API_API__MAX_CONTENT_BYTES": str(CONTENT_BYTES),
        "TESP_API_API__MAX_TASK_CONTENT_BYTES": str(CONTENT_BYTES),
        "TESP_API_API__MAX_PAGE_BYTES": str(PAGE_CAP),
    }
    with tesp_serve_process(tmp_path, env=limits) as (url, process):
        yield url, process.pid


def test_a_full_list_of_big_tasks_is_paged_under_the_cap_and_bounds_the_servers_memory(
    server: tuple[str, int],
) -> None:
    url, pid = server
    with httpx.Client(base_url=url, timeout=120) as client:
        created = []
        for i in range(TASKS):
            body = {
                "name": f"big-{i}",
                "inputs": [{"path": "/in/big.txt", "content": chr(ord("a") + i) * CONTENT_BYTES}],
                "executors": [{"image": "alpine", "command": ["wc", "-c", "/in/big.txt"]}],
            }
            answer = client.post(f"{BASE}/tasks", json=body)
            assert answer.status_code == 200, answer.text
            created.append(answer.json()["id"])

        rss_before = _status_kib(pid, "VmRSS")
        peak_measured = _reset_peak(pid)
        seen: list[str] = []
        sizes: list[int] = []
        token = None
        while True:
            params = {"view": "FULL", "page_size": "20", **({"page_token": token} if token else {})}
            answer = client.get(f"{BASE}/tasks", params=params)
            assert answer.status_code == 200, answer.text
            sizes.append(len(answer.content))
            page = answer.json()
            assert page["tasks"], "every page has at least one task"
            for task in page["tasks"]:
                assert len(task["inputs"][0]["content"]) == CONTENT_BYTES
            seen += [t["id"] for t in page["tasks"]]
            token = page.get("next_page_token")
            if not token:
                break
        peak_growth_mib = (_status_kib(pid, "VmHWM") - rss_before) / 1024

    assert max(sizes) <= PAGE_CAP, sizes
    assert sorted(seen) == sorted(created) and len(seen) == TASKS  # each task once, none lost
    assert len(sizes) > 1  # the 150 MB answer was split
    if peak_measured:
        # The old code grew by ~700 MiB here. A page now holds about one cap's worth of tasks, each in
        # a few copies (row, model, dict, JSON): well under 200 MiB.
        assert peak_growth_mib < 200, f"peak memory grew by {peak_growth_mib:.0f} MiB while listing"


async def test_pages_of_many_small_tasks_stay_under_the_smallest_cap(tmp_path: Path) -> None:
    """The budget's per-task margin covers what rendering adds (id, state, creation_time, commas),
    also when the cap is the smallest allowed (64 KiB) and a page could hold 2047 tasks."""
    store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"), synchronous="NORMAL")
    await store.open()
    try:
        settings = Settings.model_validate({"api": {"max_page_bytes": 64 * 1024}})
        app = create_app(settings, store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tes.test") as client:
            created = set()
            for i in range(400):
                answer = await client.post(
                    f"{BASE}/tasks", json={"name": f"t{i}", "executors": [{"image": "a", "command": ["x"]}]}
                )
                created.add(answer.json()["id"])
            seen: list[str] = []
            pages = 0
            token = None
            while True:
                pages += 1
                params = {"view": "FULL", "page_size": "2047", **({"page_token": token} if token else {})}
                answer = await client.get(f"{BASE}/tasks", params=params)
                assert len(answer.content) <= 64 * 1024
                seen += [t["id"] for t in answer.json()["tasks"]]
                token = answer.json().get("next_page_token")
                if not token:
                    break
        assert len(seen) == len(created) and set(seen) == created
        assert pages > 1
    finally:
        await store.close()
