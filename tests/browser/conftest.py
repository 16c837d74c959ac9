"""What a person sees, in a real browser: Debian's chromium (/usr/bin/chromium) driven by Playwright
for Python, against a real ``tesp-api serve`` (engine off: no Pulsar; tasks stay where the test puts
them). Never ``playwright install``: it downloads a browser of its own, which cannot work offline.

Every request the page makes is recorded; a test fails if anything leaves 127.0.0.1.
Screenshots go to the artifact directory (``$TESP_API_TEST_ARTIFACTS`` or ``.test-artifacts/``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesExecutorLog, TesOutputFileLog, TesState
from tesp_api.tes.views import rfc3339

REPO = Path(__file__).resolve().parents[2]
BASE = "/ga4gh/tes/v1"
CHROMIUM = os.environ.get("TESP_API_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]

pytest.importorskip("playwright", reason="Playwright for Python is not installed (pip install playwright)")

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

# The machines are small and shared: generous waits (an expectation returns as soon as it holds).
expect.set_options(timeout=20_000)


def artifact_dir() -> Path:
    where = Path(os.environ.get("TESP_API_TEST_ARTIFACTS", REPO / ".test-artifacts")) / "browser"
    where.mkdir(parents=True, exist_ok=True)
    return where


# Playwright's sync API keeps an event loop running in this thread while it is started, and
# pytest-asyncio cannot run an async test then: so Playwright lives for one module at a time (started
# again by the next browser module), never for the whole session. _SHARED keeps it to one instance
# if two modules' fixtures ever overlap (a second sync_playwright() in one thread fails).
_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium); the browser tests need it")
    if "playwright" in _SHARED:
        yield _SHARED["playwright"]
        return
    with sync_playwright() as p:
        _SHARED["playwright"] = p
        try:
            yield p
        finally:
            _SHARED.pop("playwright", None)


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if "browser" in _SHARED:
        yield _SHARED["browser"]
        return
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    _SHARED["browser"] = launched
    try:
        yield launched
    finally:
        _SHARED.pop("browser", None)
        launched.close()


@dataclass
class Visit:
    """A browser tab plus every URL it requested and every console error it logged."""

    page: Page
    context: BrowserContext
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blocked_by_csp: list[str] = field(default_factory=list)  # refused by the page's CSP: never sent

    def foreign_requests(self) -> list[str]:
        """Requests to another host that the browser really sent (not refused by the page's CSP)."""
        return [
            u
            for u in self.requests
            if urlsplit(u).hostname not in ("127.0.0.1", None)
            and not u.startswith(("data:", "blob:"))
            and u not in self.blocked_by_csp
        ]


def open_tab(browser: Browser, **context_options: Any) -> Visit:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, **context_options)
    page = context.new_page()
    visit = Visit(page, context)
    page.on("request", lambda request: visit.requests.append(request.url))
    page.on("console", lambda msg: visit.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: visit.errors.append(str(exc)))
    page.on(
        "requestfailed",
        lambda request: visit.blocked_by_csp.append(request.url) if request.failure == "csp" else None,
    )
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel task ...?" confirmations
    page.set_default_timeout(30_000)
    return visit


@pytest.fixture
def tab(browser: Browser) -> Iterator[Visit]:
    visit = open_tab(browser)
    try:
        yield visit
    finally:
        visit.context.close()


def create_task(url: str, headers: dict[str, str] | None = None, **fields: Any) -> str:
    body: dict[str, Any] = {"executors": [{"image": "alpine:3.20", "command": ["echo", "hello"]}]}
    body.update(fields)
    response = httpx.post(f"{url}{BASE}/tasks", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def as_engine_would(sqlite_path: Path, task_id: str, state: TesState, log: LogPatch) -> None:
    """Move a task on as the engine would have (the engine is off in these tests): the same store
    update, through the real SQLite store the server reads."""

    async def update() -> None:
        store = SqliteTaskStore(str(sqlite_path))
        await store.open()
        try:
            assert await store.update(task_id, state=state, log=log) is not None
        finally:
            await store.close()

    # Playwright's sync API runs an event loop in this thread: the store gets its own thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, update()).result()


def _ago(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) - timedelta(seconds=seconds))


def running_log(stdout: str) -> LogPatch:
    """A task whose first executor started 95 s ago and still runs."""
    return LogPatch(
        start_time=_ago(100),
        executor_logs={0: TesExecutorLog(start_time=_ago(95), stdout=stdout, exit_code=0)},
        system_logs=["submitted to pulsar server 'default'"],
    )


def finished_log(stdout: str, stderr: str, exit_code: int) -> LogPatch:
    """A task that ran for 2 min 5 s and ended 5 min ago."""
    return LogPatch(
        start_time=_ago(425),
        end_time=_ago(300),
        executor_logs={
            0: TesExecutorLog(
                start_time=_ago(422),
                end_time=_ago(301),
                stdout=stdout,
                stderr=stderr,
                exit_code=exit_code,
            )
        },
        outputs=[
            TesOutputFileLog(url="file:///data/out/result.txt", path="/work/result.txt", size_bytes="42")
        ],
        system_logs=["staged 1 input", "job finished on pulsar server 'default'"],
    )
