"""py-tes 1.1.4 against a real `tesp-api serve` (uvicorn, SQLite, engine disabled) with Basic and
bearer-token authentication, the tokens coming from the local OIDC issuer.

py-tes sends ``user``/``password`` as requests' ``auth=(user, password)`` (HTTP Basic) and ``token``
as ``Authorization: Bearer <token>`` (tes/client.py, ``_request_params``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests
import tes

from tests.auth.conftest import AUDIENCE, cheap_hash
from tests.services.oidc_issuer import LocalOidcIssuer, running_issuer
from tests.services.tesp_serve import running_tesp_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oidc() -> Iterator[LocalOidcIssuer]:
    with running_issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def server(oidc: LocalOidcIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running `tesp-api serve`; stopped by PID at the end."""
    home = tmp_path_factory.mktemp("tesp")
    extra = f"""
[default.auth]
mode = ["basic", "oidc"]
admin_values = ["tes-admins"]
insecure_http_hosts = ["127.0.0.1"]  # the local test issuer
[[default.auth.users]]
username = "alice"
password_hash = "{cheap_hash("alice-pw")}"
[[default.auth.users]]
username = "root"
password_hash = "{cheap_hash("root-pw")}"
admin = true
[[default.auth.issuers]]
issuer = "{oidc.issuer}"
audience = ["{AUDIENCE}"]
"""
    with running_tesp_serve(home, extra) as url:
        yield url


def a_task(name: str) -> tes.Task:
    return tes.Task(name=name, executors=[tes.Executor(image="alpine", command=["echo", "hello"])])


def status_of(call: Callable[[], object]) -> int:
    with pytest.raises(requests.exceptions.HTTPError) as info:
        call()
    assert info.value.response is not None
    return int(info.value.response.status_code)


def test_py_tes_with_basic_credentials_creates_gets_lists_and_cancels(server: str) -> None:
    client = tes.HTTPClient(server, user="alice", password="alice-pw")
    task_id = client.create_task(a_task("basic-e2e"))
    assert client.get_task(task_id, view="MINIMAL").id == task_id
    assert task_id in [t.id for t in client.list_tasks(view="MINIMAL").tasks]
    client.cancel_task(task_id)
    assert client.get_task(task_id, view="MINIMAL").state == "CANCELED"


def test_py_tes_with_a_bearer_token_creates_and_gets_its_task(server: str, oidc: LocalOidcIssuer) -> None:
    client = tes.HTTPClient(server, token=oidc.mint("bob"))
    task_id = client.create_task(a_task("bearer-e2e"))
    assert client.get_task(task_id, view="MINIMAL").id == task_id
    assert [t.id for t in client.list_tasks(view="MINIMAL").tasks] == [task_id]


def test_py_tes_users_do_not_see_each_others_tasks(server: str, oidc: LocalOidcIssuer) -> None:
    alice = tes.HTTPClient(server, user="alice", password="alice-pw")
    carol = tes.HTTPClient(server, token=oidc.mint("carol"))
    task_id = alice.create_task(a_task("private"))
    assert status_of(lambda: carol.get_task(task_id)) == 404
    assert status_of(lambda: carol.cancel_task(task_id)) == 404
    assert task_id not in [t.id for t in carol.list_tasks(view="MINIMAL").tasks]


def test_py_tes_admins_see_everybodys_tasks(server: str, oidc: LocalOidcIssuer) -> None:
    task_id = tes.HTTPClient(server, token=oidc.mint("dave")).create_task(a_task("daves"))
    root = tes.HTTPClient(server, user="root", password="root-pw")
    group_admin = tes.HTTPClient(server, token=oidc.mint("erin", groups=["tes-admins"]))
    assert root.get_task(task_id, view="MINIMAL").id == task_id
    assert group_admin.get_task(task_id, view="MINIMAL").id == task_id


def test_py_tes_without_or_with_wrong_credentials_gets_401(server: str, oidc: LocalOidcIssuer) -> None:
    assert status_of(lambda: tes.HTTPClient(server).list_tasks()) == 401
    assert status_of(lambda: tes.HTTPClient(server, user="alice", password="nope").list_tasks()) == 401
    expired = oidc.mint("bob", issued_at=time.time() - 7200, lifetime=60)
    assert status_of(lambda: tes.HTTPClient(server, token=expired).list_tasks()) == 401


def test_py_tes_reads_the_open_service_info_without_credentials(server: str) -> None:
    assert tes.HTTPClient(server).get_service_info().name == "tesp-api"
