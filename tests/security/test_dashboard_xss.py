"""Stored XSS against the dashboard: a task submitter (untrusted) puts markup in every field the
dashboard shows, including the executor logs an engine would store; an administrator opens the table
and the task page. Nothing may run, and nothing may be turned into an element.

Defences (docs/dashboard.md "Security"): the script only sets textContent, and the page's CSP allows
no inline script. Runs in Debian's chromium (tests/browser/conftest.py; skipped without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="Playwright for Python is not installed")

from playwright.sync_api import expect

from tesp_api.store.port import LogPatch
from tesp_api.tes.models import TesExecutorLog, TesState
from tests.browser import conftest as browser_fixtures
from tests.browser.conftest import Visit, as_engine_would, create_task
from tests.services.tesp_serve import running_tesp_serve

# The browser fixtures of tests/browser (this directory has its own conftest).
playwright = browser_fixtures.playwright
browser = browser_fixtures.browser
tab = browser_fixtures.tab

pytestmark = pytest.mark.slow

PAYLOADS = [
    '<img src=x onerror="window.pwned=(window.pwned||0)+1">',
    "<script>window.pwned=(window.pwned||0)+1</script>",
    '<svg onload="window.pwned=(window.pwned||0)+1"></svg>',
    '"><iframe srcdoc="<script>parent.pwned=1</script>">',
    "javascript:window.pwned=1",
]
EVIL = " ".join(PAYLOADS)


@dataclass
class Served:
    url: str
    task_id: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home: Path = tmp_path_factory.mktemp("tesp")
    with running_tesp_serve(home, '[default.transfer]\nallowed_dirs = ["/data"]\n') as url:
        task_id = create_task(
            url,
            name=EVIL,
            description=EVIL,
            tags={"x": EVIL, EVIL[:40]: "y"},
            inputs=[{"path": "/in/a", "content": EVIL}],
            outputs=[{"path": "/out/b", "url": "file:///data/out/b"}],
            executors=[{"image": "alpine", "command": ["echo", EVIL], "env": {"E": EVIL}}],
        )
        log = LogPatch(
            start_time="2026-01-01T00:00:00Z",
            end_time="2026-01-01T00:00:01Z",
            executor_logs={0: TesExecutorLog(stdout=EVIL, stderr=EVIL, exit_code=0)},
            system_logs=[EVIL],
        )
        as_engine_would(home / "tasks.sqlite3", task_id, TesState.COMPLETE, log)
        yield Served(url, task_id)


def assert_nothing_ran(visit: Visit) -> None:
    page = visit.page
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("main img, main svg, main iframe, main script").count() == 0
    assert visit.foreign_requests() == []


def test_markup_in_a_task_does_not_run_in_the_table(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    row = tab.page.locator(f'#tasks tbody tr[data-task-id="{served.task_id}"]')
    expect(row.locator(".name")).to_have_text(EVIL)
    assert_nothing_ran(tab)


@pytest.mark.parametrize("panel", ["info", "logs", "json"])
def test_markup_in_a_task_does_not_run_on_its_page(tab: Visit, served: Served, panel: str) -> None:
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.task_id}")
    expect(tab.page.locator("#task-title")).to_have_text(EVIL)
    tab.page.click(f"[data-tab={panel}]")
    visible = tab.page.locator(f'[data-panel="{panel}"]')
    expect(visible).to_contain_text("window.pwned")  # shown, as text
    assert_nothing_ran(tab)
