"""py-tes 0.4.2 (installed by the Snakemake TES plugin and Toil 5) asks GET /v1/tasks/service-info
and builds its ServiceInfo(name, doc, storage) from the whole answer: any other field fails it.

The last tests run py-tes 0.4.2 itself: it pins old dependencies and its ``tes`` package clashes with
py-tes 1.1.4 in the venv, so its wheel is fetched with ``pip download --no-deps`` into a temp dir
and put first on the PYTHONPATH of a child Python (attrs, requests, python-dateutil and six, which
it imports, are in the venv already). Skipped with the reason when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tesp_api.auth.passwords import hash_password
from tests.api.conftest import BASE, assert_tes_error, make_settings
from tests.services.tesp_serve import running_tesp_serve

LEGACY_PATHS = ["/v1/tasks/service-info", f"{BASE}/tasks/service-info"]


@pytest.mark.parametrize("path", LEGACY_PATHS)
async def test_the_legacy_service_info_has_exactly_name_doc_and_storage(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert set(response.json()) == {"name", "doc", "storage"}


async def test_the_legacy_service_info_takes_its_values_from_settings(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(
        service_info={"name": "Example TES", "description": "for tests", "storage": ["s3://bucket"]}
    )
    async with client_for(settings) as client:
        info = (await client.get("/v1/tasks/service-info")).json()
    assert info == {"name": "Example TES", "doc": "for tests", "storage": ["s3://bucket"]}


async def test_the_legacy_path_is_not_taken_for_a_task_id(client: httpx.AsyncClient) -> None:
    assert_tes_error(await client.get(f"{BASE}/tasks/service-infos"), 404, "task not found")


async def test_the_legacy_service_info_is_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert f"{BASE}/tasks/service-info" not in document["paths"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": httpx.BasicAuth(user, password)._auth_header}


async def test_the_legacy_service_info_is_protected_like_service_info(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    user = {"username": "ann", "password_hash": hash_password("ann-pass", log2_n=10)}
    settings = make_settings(auth={"mode": "basic", "users": [user], "service_info_public": False})
    async with client_for(settings) as client:
        assert_tes_error(await client.get("/v1/tasks/service-info"), 401)
        assert (
            await client.get("/v1/tasks/service-info", headers=_basic("ann", "ann-pass"))
        ).status_code == 200


# --- py-tes 0.4.2 itself -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pytes_042(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``tes`` package is py-tes 0.4.2."""
    where = tmp_path_factory.mktemp("py-tes-0.4.2")
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
         "-d", str(where), "py-tes==0.4.2"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    wheels = list(where.glob("py_tes-0.4.2-*.whl"))
    if download.returncode != 0 or not wheels:
        pytest.skip(f"py-tes 0.4.2 could not be downloaded: {download.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(where / "site")
    return where / "site"


def _run_old_client(
    site: Path, url: str, user: str | None = None, password: str | None = None
) -> dict[str, object]:
    script = """
import json, sys, tes
assert tes.__version__ == "0.4.2", tes.__version__
client = tes.HTTPClient(sys.argv[1], user=sys.argv[2] or None, password=sys.argv[3] or None)
info = client.get_service_info()
print(json.dumps({"type": type(info).__name__, **info.as_dict()}))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", script, url, user or "", password or ""],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    extra = '[default.service_info]\nname = "Old clients welcome"\nstorage = ["file:///data"]\n'
    with running_tesp_serve(tmp_path_factory.mktemp("tesp"), extra) as url:
        yield url


def test_py_tes_0_4_2_reads_the_service_info(pytes_042: Path, server: str) -> None:
    info = _run_old_client(pytes_042, server)
    assert info == {
        "type": "ServiceInfo",
        "name": "Old clients welcome",
        "doc": info["doc"],
        "storage": ["file:///data"],
    }
    assert isinstance(info["doc"], str) and info["doc"]


def test_py_tes_0_4_2_reads_the_service_info_with_basic_auth_when_it_is_protected(
    pytes_042: Path, tmp_path: Path
) -> None:
    extra = f"""
[default.auth]
mode = "basic"
service_info_public = false
[[default.auth.users]]
username = "ann"
password_hash = "{hash_password("ann-pass", log2_n=10)}"
"""
    with running_tesp_serve(tmp_path, extra, ready_headers=_basic("ann", "ann-pass")) as url:
        info = _run_old_client(pytes_042, url, "ann", "ann-pass")
    assert info["type"] == "ServiceInfo"
    assert set(info) == {"type", "name", "doc", "storage"} or set(info) == {"type", "name", "doc"}
