"""The dashboard at /dashboard in a real browser, with authentication off (everybody is an admin)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tesp_api.tes.models import TesState
from tests.browser.conftest import (
    BASE,
    Visit,
    as_engine_would,
    create_task,
    finished_log,
    running_log,
)
from tests.services.tesp_serve import running_tesp_serve

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    sqlite: Path
    done: str  # a COMPLETE task with executor logs
    failed: str  # an EXECUTOR_ERROR task
    running: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("tesp")
    with running_tesp_serve(home, '[default.transfer]\nallowed_dirs = ["/data"]\n') as url:
        sqlite = home / "tasks.sqlite3"
        done = create_task(
            url,
            name="align-sample-A",
            tags={"project": "genomes", "run": "7"},
            inputs=[{"path": "/work/reads.fq", "url": "file:///data/in/reads.fq"}],
            outputs=[{"path": "/work/result.txt", "url": "file:///data/out/result.txt"}],
            executors=[{"image": "biocontainers/bwa:0.7", "command": ["bwa", "mem", "ref.fa", "reads.fq"]}],
        )
        as_engine_would(sqlite, done, TesState.COMPLETE, finished_log("aligned 1204 reads\n", "", 0))
        failed = create_task(url, name="align-sample-B", tags={"project": "genomes"})
        as_engine_would(
            sqlite, failed, TesState.EXECUTOR_ERROR, finished_log("", "bwa: reads.fq: no such file\n", 1)
        )
        running = create_task(url, name="variant-call", tags={"project": "variants"})
        as_engine_would(sqlite, running, TesState.RUNNING, running_log("calling chr1\n"))
        for i in range(3):
            create_task(url, name=f"qc-report-{i}", tags={"project": "qc"})
        yield Served(url, sqlite, done, failed, running)


def rows(visit: Visit) -> list[str]:
    return [
        str(r)
        for r in visit.page.locator("#tasks tbody tr").evaluate_all("rs => rs.map(r => r.dataset.taskId)")
    ]


def open_dashboard(visit: Visit, url: str, query: str = "") -> None:
    visit.page.goto(f"{url}/dashboard{query}")
    expect(visit.page.locator("#tasks tbody tr").first).to_be_visible()


def test_the_table_shows_the_tasks_created_through_the_api(tab: Visit, served: Served) -> None:
    task_id = create_task(served.url, name="made-through-the-api")
    open_dashboard(tab, served.url)
    row = tab.page.locator(f'#tasks tbody tr[data-task-id="{task_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".name")).to_have_text("made-through-the-api")
    expect(row.locator(".state")).to_have_text("QUEUED")
    expect(row.locator(".created")).not_to_be_empty()


def test_the_table_shows_state_and_duration_of_a_finished_task(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    row = tab.page.locator(f'#tasks tbody tr[data-task-id="{served.done}"]')
    expect(row.locator(".state")).to_have_text("COMPLETE")
    expect(row.locator(".duration")).to_have_text("2m 5s")


def test_filtering_by_state_shows_only_tasks_in_that_state(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    tab.page.select_option("#filters select[name=state]", "EXECUTOR_ERROR")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(1)
    assert rows(tab) == [served.failed]


def test_filtering_by_name_prefix(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    tab.page.fill("#filters input[name=name_prefix]", "align-")
    tab.page.click("#filters button[type=submit]")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(2)
    assert set(rows(tab)) == {served.done, served.failed}


def test_filtering_by_tag_key_and_value(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    tab.page.fill("#filters input[name=tag]", "project=variants")
    tab.page.click("#filters button[type=submit]")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(1)
    assert rows(tab) == [served.running]


def test_filters_can_be_given_in_the_address(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url, "?state=COMPLETE")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(1)
    assert rows(tab) == [served.done]


def test_paging_follows_the_apis_page_tokens(tab: Visit, served: Served) -> None:
    for i in range(11):
        create_task(served.url, name=f"page-test-{i:02d}")
    open_dashboard(tab, served.url)
    tab.page.fill("#filters input[name=name_prefix]", "page-test-")
    tab.page.select_option("#filters select[name=page_size]", "10")
    tab.page.click("#filters button[type=submit]")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(10)
    first_page = rows(tab)
    expect(tab.page.locator("#prev-page")).to_be_disabled()
    tab.page.click("#next-page")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(1)
    expect(tab.page.locator("#page-no")).to_have_text("Page 2")
    expect(tab.page.locator("#next-page")).to_be_disabled()
    assert rows(tab)[0] not in first_page
    tab.page.click("#prev-page")
    expect(tab.page.locator("#tasks tbody tr")).to_have_count(10)
    assert rows(tab) == first_page


def test_the_table_refreshes_by_itself(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    late = create_task(served.url, name="arrived-later")
    # Auto-refresh is on by default (every 5 s): the new task appears without any click.
    expect(tab.page.locator(f'#tasks tbody tr[data-task-id="{late}"]')).to_be_visible(timeout=20000)


def test_the_task_page_shows_executors_inputs_outputs_and_logs(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.done}")
    page = tab.page
    expect(page.locator("#task-title")).to_have_text("align-sample-A")
    expect(page.locator("#task-state")).to_have_text("COMPLETE")
    expect(page.locator("#task-executors tbody")).to_contain_text("biocontainers/bwa:0.7")
    expect(page.locator("#task-executors tbody")).to_contain_text("bwa mem ref.fa reads.fq")
    expect(page.locator("#task-inputs tbody")).to_contain_text("file:///data/in/reads.fq")
    expect(page.locator("#task-outputs tbody")).to_contain_text("/work/result.txt")
    expect(page.locator("#task-summary")).to_contain_text("project=genomes")
    page.click("[data-tab=logs]")
    log = page.locator('.executor-log[data-executor="0"]')
    expect(log).to_contain_text("exit code 0")
    expect(log).to_contain_text("aligned 1204 reads")
    expect(page.locator("#system-logs")).to_contain_text("staged 1 input")
    expect(page.locator("#output-logs tbody")).to_contain_text("42")
    page.click("[data-tab=json]")
    expect(page.locator("#task-json")).to_contain_text(f'"id": "{served.done}"')


def test_the_task_page_shows_the_stderr_tail_of_a_failed_executor(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.failed}")
    tab.page.click("[data-tab=logs]")
    log = tab.page.locator('.executor-log[data-executor="0"]')
    expect(log).to_contain_text("exit code 1")
    expect(log).to_contain_text("bwa: reads.fq: no such file")


def test_clicking_a_task_id_opens_its_page_and_back_returns_to_the_table(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    tab.page.click(f'#tasks tbody tr[data-task-id="{served.done}"] td.id a')
    expect(tab.page.locator("#task-title")).to_have_text("align-sample-A")
    assert tab.page.url.endswith(f"/dashboard/tasks/{served.done}")
    tab.page.go_back()
    expect(tab.page.locator("#tasks-view")).to_be_visible()


def test_cancel_from_the_table(tab: Visit, served: Served) -> None:
    task_id = create_task(served.url, name="to-cancel-from-table")
    open_dashboard(tab, served.url)
    row = tab.page.locator(f'#tasks tbody tr[data-task-id="{task_id}"]')
    row.locator("button.cancel").click()
    expect(row.locator(".state")).to_have_text("CANCELED")
    expect(row.locator("button.cancel")).to_have_count(0)
    assert httpx.get(f"{served.url}{BASE}/tasks/{task_id}").json()["state"] == "CANCELED"


def test_cancel_from_the_task_page(tab: Visit, served: Served) -> None:
    task_id = create_task(served.url, name="to-cancel-from-page")
    tab.page.goto(f"{served.url}/dashboard/tasks/{task_id}")
    expect(tab.page.locator("#task-state")).to_have_text("QUEUED")
    tab.page.click("#task-cancel")
    expect(tab.page.locator("#task-state")).to_have_text("CANCELED")
    expect(tab.page.locator("#task-cancel")).to_be_hidden()
    assert httpx.get(f"{served.url}{BASE}/tasks/{task_id}").json()["state"] == "CANCELED"


def test_a_finished_task_has_no_cancel_button(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.done}")
    expect(tab.page.locator("#task-state")).to_have_text("COMPLETE")
    expect(tab.page.locator("#task-cancel")).to_be_hidden()


def test_the_service_page_shows_the_service_info(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.click("#nav-service")
    info = tab.page.locator("#service-info")
    expect(info).to_contain_text("tesp-api")
    expect(info).to_contain_text("org.ga4gh:tes:1.1.0")
    expect(info).to_contain_text("pulsar_server")
    servers = tab.page.locator("#pulsar-servers tbody")
    expect(servers).to_contain_text("default")
    expect(servers).to_contain_text("unknown")  # the engine is off: nothing asked Pulsar yet


def test_a_task_name_with_markup_is_shown_as_text_and_never_runs(tab: Visit, served: Served) -> None:
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    task_id = create_task(served.url, name=evil, description=evil, tags={"x": evil})
    open_dashboard(tab, served.url)
    row = tab.page.locator(f'#tasks tbody tr[data-task-id="{task_id}"]')
    expect(row.locator(".name")).to_have_text(evil)
    tab.page.goto(f"{served.url}/dashboard/tasks/{task_id}")
    expect(tab.page.locator("#task-title")).to_have_text(evil)
    assert tab.page.evaluate("() => window.pwned") is None
    assert tab.page.locator("img[src=x]").count() == 0


def test_the_dashboard_loads_nothing_from_another_host_and_logs_no_error(tab: Visit, served: Served) -> None:
    open_dashboard(tab, served.url)
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.done}")
    expect(tab.page.locator("#task-title")).to_have_text("align-sample-A")
    assert tab.requests, "no request recorded?"
    assert tab.foreign_requests() == []
    assert tab.errors == []
