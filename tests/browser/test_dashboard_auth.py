"""The dashboard with authentication on (Basic and OIDC together): each way of signing in works, and a
user sees only their own tasks, as the API scopes them; an administrator sees every task and its owner.

Also takes the screenshot of docs/dashboard.md (as the administrator, so the Owner column shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tesp_api.auth.passwords import hash_password
from tesp_api.tes.models import TesState
from tests.browser.conftest import (
    REPO,
    Visit,
    artifact_dir,
    as_engine_would,
    create_task,
    finished_log,
    open_tab,
    running_log,
)
from tests.services.oidc_issuer import LocalOidcIssuer, running_issuer
from tests.services.tesp_serve import running_tesp_serve

pytestmark = pytest.mark.slow

AUDIENCE = "tesp"
SCREENSHOT = REPO / "docs" / "img" / "dashboard.png"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": httpx.BasicAuth(user, PASSWORDS[user])._auth_header}


@dataclass
class Served:
    url: str
    issuer: LocalOidcIssuer
    tasks: dict[str, list[str]] = field(default_factory=dict)  # owner -> task ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("tesp")
    users = "".join(
        f'[[default.auth.users]]\nusername = "{name}"\npassword_hash = "{hash_password(pw, log2_n=10)}"\n'
        + ("admin = true\n" if name == "root" else "")
        for name, pw in PASSWORDS.items()
    )
    with running_issuer() as issuer:
        extra = f"""
[default.transfer]
allowed_dirs = ["/data"]
[default.auth]
mode = ["basic", "oidc"]
insecure_http_hosts = ["127.0.0.1"]
{users}
[[default.auth.issuers]]
issuer = "{issuer.issuer}"
audience = ["{AUDIENCE}"]
"""
        with running_tesp_serve(home, extra) as url:
            served = Served(url, issuer)
            sqlite = home / "tasks.sqlite3"
            alice = served.tasks.setdefault("alice", [])
            bob = served.tasks.setdefault("bob", [])
            carol = served.tasks.setdefault("carol", [])  # an OIDC user
            alice.append(
                create_task(url, basic("alice"), name="rnaseq-sample-01", tags={"project": "rnaseq"})
            )
            as_engine_would(sqlite, alice[-1], TesState.COMPLETE, finished_log("done\n", "", 0))
            alice.append(
                create_task(url, basic("alice"), name="rnaseq-sample-02", tags={"project": "rnaseq"})
            )
            as_engine_would(sqlite, alice[-1], TesState.RUNNING, running_log("mapping\n"))
            alice.append(create_task(url, basic("alice"), name="rnaseq-merge", tags={"project": "rnaseq"}))
            bob.append(create_task(url, basic("bob"), name="assembly-k31", tags={"project": "assembly"}))
            as_engine_would(
                sqlite, bob[-1], TesState.EXECUTOR_ERROR, finished_log("", "out of memory\n", 137)
            )
            bob.append(create_task(url, basic("bob"), name="assembly-k63", tags={"project": "assembly"}))
            token = {"Authorization": f"Bearer {issuer.mint('carol', audience=AUDIENCE)}"}
            carol.append(create_task(url, token, name="blast-search", tags={"project": "blast"}))
            as_engine_would(sqlite, carol[-1], TesState.COMPLETE, finished_log("12 hits\n", "", 0))
            yield served


def visible_ids(visit: Visit) -> set[str]:
    expect(visit.page.locator("#tasks tbody tr").first).to_be_visible()
    ids = visit.page.locator("#tasks tbody tr").evaluate_all("rs => rs.map(r => r.dataset.taskId)")
    return {str(i) for i in ids}


@pytest.fixture
def prompt_tab(browser: Browser) -> Iterator[Visit]:
    """A tab whose browser answers the Basic prompt as alice (what a person types into it)."""
    visit = open_tab(browser, http_credentials={"username": "alice", "password": "alice-pw"})
    try:
        yield visit
    finally:
        visit.context.close()


def test_signing_in_with_the_browsers_basic_prompt_shows_only_ones_own_tasks(
    prompt_tab: Visit, served: Served
) -> None:
    prompt_tab.page.goto(f"{served.url}/dashboard")
    prompt_tab.page.click("#browser-sign-in")  # the browser's dialog: answered with alice's login
    assert visible_ids(prompt_tab) == set(served.tasks["alice"])
    expect(prompt_tab.page.locator("#who")).to_have_text("alice")


def test_without_credentials_the_page_asks_to_sign_in(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    expect(tab.page.locator("#login")).to_be_visible()
    expect(tab.page.locator("#basic-form")).to_be_visible()
    expect(tab.page.locator("#token-form")).to_be_visible()
    expect(tab.page.locator("#tasks-view")).to_be_hidden()


def test_signing_in_with_the_form_shows_only_ones_own_tasks(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.fill("#basic-form input[name=username]", "bob")
    tab.page.fill("#basic-form input[name=password]", "bob-pw")
    tab.page.click("#basic-form button[type=submit]")
    assert visible_ids(tab) == set(served.tasks["bob"])
    expect(tab.page.locator("#who")).to_have_text("bob")
    expect(tab.page.locator("th.owner-col")).to_be_hidden()  # only administrators see owners


def test_a_wrong_password_in_the_form_is_refused(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.fill("#basic-form input[name=username]", "bob")
    tab.page.fill("#basic-form input[name=password]", "not-bobs")
    tab.page.click("#basic-form button[type=submit]")
    expect(tab.page.locator("#message")).to_contain_text("not accepted")
    expect(tab.page.locator("#login")).to_be_visible()


def test_signing_in_with_an_oidc_token_shows_only_ones_own_tasks(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.fill("#token-form input[name=token]", served.issuer.mint("carol", audience=AUDIENCE))
    tab.page.click("#token-form button[type=submit]")
    assert visible_ids(tab) == set(served.tasks["carol"])


def test_signing_out_forgets_the_credentials(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.fill("#basic-form input[name=username]", "bob")
    tab.page.fill("#basic-form input[name=password]", "bob-pw")
    tab.page.click("#basic-form button[type=submit]")
    visible_ids(tab)
    tab.page.click("#sign-out")
    expect(tab.page.locator("#login")).to_be_visible()
    tab.page.reload()
    expect(tab.page.locator("#login")).to_be_visible()


def test_a_user_cannot_open_another_users_task(tab: Visit, served: Served) -> None:
    tab.page.goto(f"{served.url}/dashboard")
    tab.page.fill("#basic-form input[name=username]", "bob")
    tab.page.fill("#basic-form input[name=password]", "bob-pw")
    tab.page.click("#basic-form button[type=submit]")
    visible_ids(tab)
    tab.page.goto(f"{served.url}/dashboard/tasks/{served.tasks['alice'][0]}")
    expect(tab.page.locator("#message")).to_contain_text("404")
    expect(tab.page.locator("#task-title")).to_have_text("")


def test_an_administrator_sees_every_task_and_its_owner(browser: Browser, served: Served) -> None:
    visit = open_tab(browser, http_credentials={"username": "root", "password": "root-pw"})
    try:
        visit.page.goto(f"{served.url}/dashboard")
        visit.page.click("#browser-sign-in")
        every = {t for ids in served.tasks.values() for t in ids}
        assert visible_ids(visit) == every
        expect(visit.page.locator("th.owner-col")).to_be_visible()
        bob_row = visit.page.locator(f'#tasks tbody tr[data-task-id="{served.tasks["bob"][0]}"]')
        expect(bob_row.locator("td.owner-col")).to_have_text("bob")
        carol_row = visit.page.locator(f'#tasks tbody tr[data-task-id="{served.tasks["carol"][0]}"]')
        expect(carol_row.locator("td.owner-col")).to_contain_text("carol")
        expect(visit.page.locator("#who")).to_have_text("root (admin)")
        visit.page.uncheck("#filters input[name=auto]")
        shot = artifact_dir() / "dashboard.png"
        visit.page.screenshot(path=str(shot), full_page=True)
        visit.page.goto(f"{served.url}/dashboard/tasks/{served.tasks['bob'][0]}")
        visit.page.click("[data-tab=logs]")
        expect(visit.page.locator('.executor-log[data-executor="0"]')).to_contain_text("out of memory")
        task_shot = artifact_dir() / "dashboard-task.png"
        visit.page.screenshot(path=str(task_shot), full_page=True)
        assert visit.foreign_requests() == []
    finally:
        visit.context.close()
    # docs/img/ holds these screenshots: written when missing or with TESP_API_UPDATE_SCREENSHOTS=1
    # (so a test run does not dirty the work tree); every run keeps them in the artifact directory.
    if not SCREENSHOT.exists() or os.environ.get("TESP_API_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
        shutil.copyfile(task_shot, SCREENSHOT.with_name("dashboard-task.png"))
