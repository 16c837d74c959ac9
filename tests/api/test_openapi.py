"""The OpenAPI document says what the server answers, and its pages (Swagger UI, ReDoc) work offline."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tesp_api.auth.passwords import hash_password
from tesp_api.store.port import LogPatch
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesExecutorLog, TesOutputFileLog, TesState
from tests.api.conftest import BASE, make_settings, task_body

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
EXPECTED_STATUSES = {
    ("/service-info", "get"): {"200"},
    ("/tasks", "get"): {"200", "400", "503"},
    ("/tasks", "post"): {"200", "400", "409", "413", "415", "503"},  # 409: Idempotency-Key reused
    ("/tasks/{id}", "get"): {"200", "400", "404", "503"},
    ("/tasks/{id}:cancel", "post"): {"200", "404", "409", "413", "503"},
}


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path.removeprefix(BASE), method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


async def test_no_operation_documents_a_422(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    text = json.dumps(document)
    assert "HTTPValidationError" not in text
    assert all("422" not in op["responses"] for op in _operations(document).values())


async def test_every_operation_documents_the_statuses_it_answers(client: httpx.AsyncClient) -> None:
    operations = _operations(await _document(client))
    assert {key: set(op["responses"]) for key, op in operations.items()} == EXPECTED_STATUSES


async def test_every_documented_error_is_an_error_response(client: httpx.AsyncClient) -> None:
    for key, operation in _operations(await _document(client)).items():
        for status, answer in operation["responses"].items():
            if status != "200":
                assert answer["content"]["application/json"]["schema"] == ERROR_REF, (key, status)


async def test_create_task_documents_its_body_and_its_answer(client: httpx.AsyncClient) -> None:
    create = _operations(await _document(client))[("/tasks", "post")]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/tesTask"}
    answer = create["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/tesCreateTaskResponse"}


async def test_with_authentication_on_every_protected_operation_documents_401(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    user = {"username": "ann", "password_hash": hash_password("secret-pass", log2_n=10)}
    settings = make_settings(auth={"mode": "basic", "users": [user]})
    async with client_for(settings) as client:
        operations = _operations(await _document(client))
    for key, operation in operations.items():
        if key == ("/service-info", "get"):  # public by default (auth.service_info_public)
            assert "401" not in operation["responses"]
        else:
            assert operation["responses"]["401"]["content"]["application/json"]["schema"] == ERROR_REF


async def test_every_reference_in_the_document_resolves_inside_it(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
    assert refs, "no $ref at all?"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref  # no external $ref: the document works offline
        assert ref.rsplit("/", 1)[-1] in document["components"]["schemas"], ref


async def test_query_parameters_are_not_nullable(client: httpx.AsyncClient) -> None:
    for operation in _operations(await _document(client)).values():
        for parameter in operation.get("parameters", []):
            assert "null" not in json.dumps(parameter["schema"]), parameter


async def test_the_view_and_state_parameters_list_what_the_server_accepts(client: httpx.AsyncClient) -> None:
    listing = _operations(await _document(client))[("/tasks", "get")]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert params["view"]["enum"] == ["MINIMAL", "BASIC", "FULL"]
    assert "QUEUED" in params["state"]["enum"]


# --- the documentation pages, offline -----------------------------------------------------------

_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_page_loads_nothing_from_another_host(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not _EXTERNAL.search(html), html
    assert (
        "cdn.jsdelivr.net" not in html
        and "fastapi.tiangolo.com" not in html
        and "fonts.googleapis" not in html
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_every_asset_of_the_documentation_page_is_served_here(
    client: httpx.AsyncClient, page: str
) -> None:
    html = (await client.get(page)).text
    assets = re.findall(r"""(?:src|href)\s*=\s*["'](/[^"']+)["']""", html)
    assets += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["'](/[^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 0


async def test_swagger_ui_does_not_call_the_public_validator(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html


async def test_the_favicon_is_served_here(client: httpx.AsyncClient) -> None:
    response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"


async def test_the_packaged_swagger_ui_is_version_5_which_renders_openapi_3_1(
    client: httpx.AsyncClient,
) -> None:
    bundle = (await client.get("/static/docs/swagger-ui-bundle.js")).text
    document = await _document(client)
    assert document["openapi"].startswith("3.1")
    # Swagger UI 4 (swagger-ui-bundle 1.1.0 on PyPI) has no OpenAPI 3.1 support; 5 has "OpenAPI31".
    assert "OpenAPI31" in bundle or "openapi31" in bundle.lower()


# --- real answers conform to the document -------------------------------------------------------


def _validator(document: dict[str, Any], schema: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


async def _finished_task(client: httpx.AsyncClient, store: SqliteTaskStore) -> str:
    """A task with every part filled in: inputs, outputs, tags, resources and the engine's logs."""
    response = await client.post(
        f"{BASE}/tasks",
        json=task_body(
            name="full",
            description="every field",
            inputs=[{"path": "/in/a.txt", "content": "hello"}],
            outputs=[{"path": "/out/b.txt", "url": "s3://bucket/b.txt"}],
            resources={"cpu_cores": 2, "ram_gb": 1.5},
            tags={"k": "v"},
        ),
    )
    assert response.status_code == 200, response.text
    task_id = str(response.json()["id"])
    log = LogPatch(
        start_time="2026-01-01T00:00:00Z",
        end_time="2026-01-01T00:01:00Z",
        executor_logs={0: TesExecutorLog(stdout="out", stderr="err", exit_code=0)},
        outputs=[TesOutputFileLog(url="s3://bucket/b.txt", path="/out/b.txt", size_bytes="5")],
        system_logs=["done"],
        metadata={"pulsar_server": "default"},
    )
    assert await store.update(task_id, state=TesState.COMPLETE, log=log) is not None
    return task_id


@pytest.mark.parametrize("view", ["MINIMAL", "BASIC", "FULL"])
async def test_every_view_of_a_task_conforms_to_the_documented_schema(
    client: httpx.AsyncClient, store: SqliteTaskStore, view: str
) -> None:
    document = await _document(client)
    task_id = await _finished_task(client, store)
    task = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": view})).json()
    _validator(document, "tesTaskView").validate(task)
    listing = (await client.get(f"{BASE}/tasks", params={"view": view})).json()
    _validator(document, "tesListTasksResponse").validate(listing)


async def test_the_service_info_conforms_to_the_documented_schema(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    _validator(document, "tesServiceInfo").validate((await client.get(f"{BASE}/service-info")).json())


async def test_the_create_example_is_accepted(client: httpx.AsyncClient) -> None:
    create = _operations(await _document(client))[("/tasks", "post")]
    example = create["requestBody"]["content"]["application/json"]["example"]
    assert (await client.post(f"{BASE}/tasks", json=example)).status_code == 200


async def test_create_task_links_its_id_to_get_and_cancel(client: httpx.AsyncClient) -> None:
    create = _operations(await _document(client))[("/tasks", "post")]
    links = create["responses"]["200"]["links"]
    assert {name: link["parameters"] for name, link in links.items()} == {
        "GetTask": {"id": "$response.body#/id"},
        "CancelTask": {"id": "$response.body#/id"},
    }


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_pages_forbid_loading_from_elsewhere(
    client: httpx.AsyncClient, page: str
) -> None:
    policy = (await client.get(page)).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
