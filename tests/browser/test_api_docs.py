"""Swagger UI (/, /docs) and ReDoc (/redoc) render every TES operation in a browser that can reach
nothing but tesp-api, as on an air-gapped site: their bundles are served by tesp-api itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Visit
from tests.services.tesp_serve import running_tesp_serve

pytestmark = pytest.mark.slow

OPERATIONS = ["GetServiceInfo", "ListTasks", "CreateTask", "GetTask", "CancelTask"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_tesp_serve(tmp_path_factory.mktemp("tesp")) as served:
        yield served


@pytest.fixture
def offline_tab(tab: Visit, url: str) -> Visit:
    """Requests to any host but tesp-api's fail, as they would on a site without internet."""
    tab.context.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort()
    )
    return tab


def test_swagger_ui_at_the_root_renders_every_operation(offline_tab: Visit, url: str) -> None:
    page = offline_tab.page
    page.goto(f"{url}/")
    assert page.url.endswith("/docs")
    for operation in OPERATIONS:
        expect(page.locator(f"#operations-TaskService-{operation}")).to_be_visible()
    expect(page.locator(".opblock-summary-path").first).to_contain_text("/ga4gh/tes/v1")
    assert offline_tab.foreign_requests() == []
    assert not [e for e in offline_tab.errors if "Failed to load resource" not in e], offline_tab.errors


def test_swagger_ui_shows_the_documented_errors_of_an_operation(offline_tab: Visit, url: str) -> None:
    page = offline_tab.page
    page.goto(f"{url}/docs")
    page.click("#operations-TaskService-CreateTask .opblock-summary")
    responses = page.locator("#operations-TaskService-CreateTask .responses-table")
    for status in ("200", "400", "413", "415"):
        expect(responses.locator(f'tr[data-code="{status}"]')).to_be_visible()
    expect(responses.locator('tr[data-code="422"]')).to_have_count(0)


def test_redoc_renders_every_operation(offline_tab: Visit, url: str) -> None:
    page = offline_tab.page
    page.goto(f"{url}/redoc")
    for operation in OPERATIONS:
        expect(page.locator(f'[data-section-id="operation/{operation}"]')).to_be_attached()
    expect(page.get_by_role("heading", name="CreateTask")).to_be_visible()
    assert offline_tab.foreign_requests() == []
