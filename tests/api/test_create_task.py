"""POST /tasks: what is accepted, and how everything else is refused (400 naming the field, never 422)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from tesp_api.store.sqlite import SqliteTaskStore
from tests.api.conftest import BASE, assert_tes_error, create_task, make_settings, task_body

KIB = 1024


async def post(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post(f"{BASE}/tasks", json=body)


async def test_create_returns_the_new_task_id_and_the_task_is_queued(client: httpx.AsyncClient) -> None:
    response = await post(client, task_body(name="hello"))
    assert response.status_code == 200
    assert set(response.json()) == {"id"}
    task = (await client.get(f"{BASE}/tasks/{response.json()['id']}")).json()
    assert task["state"] == "QUEUED"


async def test_each_task_gets_its_own_id(client: httpx.AsyncClient) -> None:
    assert await create_task(client) != await create_task(client)


async def test_id_and_state_sent_by_the_client_are_ignored(client: httpx.AsyncClient) -> None:
    task_id = await create_task(client, id="chosen-by-client", state="COMPLETE")
    assert task_id != "chosen-by-client"
    assert (await client.get(f"{BASE}/tasks/{task_id}")).json()["state"] == "QUEUED"


async def test_missing_executors_is_400_naming_executors(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, {"name": "x"}), 400, "executors")


async def test_empty_executors_list_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, task_body(executors=[])), 400, "executors")


async def test_executor_without_image_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(
        await post(client, task_body(executors=[{"command": ["true"]}])), 400, "executors[0].image"
    )


async def test_executor_with_blank_image_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(executors=[{"image": " ", "command": ["true"]}])
    assert_tes_error(await post(client, body), 400, "executors[0].image")


async def test_executor_without_command_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(
        await post(client, task_body(executors=[{"image": "alpine"}])), 400, "executors[0].command"
    )


async def test_executor_with_empty_command_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(executors=[{"image": "alpine", "command": []}])
    assert_tes_error(await post(client, body), 400, "executors[0].command")


async def test_wrong_type_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    body = task_body(executors=[{"image": "alpine", "command": "echo hello"}])
    assert_tes_error(await post(client, body), 400, "executors[0].command")


async def test_relative_container_paths_are_400_naming_the_field(client: httpx.AsyncClient) -> None:
    executor = {"image": "alpine", "command": ["true"]}
    cases: dict[str, dict[str, Any]] = {
        "inputs[0].path": {"inputs": [{"url": "http://h/f", "path": "data/f"}]},
        "outputs[0].path": {"outputs": [{"url": "http://h/f", "path": "out/f"}]},
        "volumes[0]": {"volumes": ["vol"]},
        "executors[0].workdir": {"executors": [{**executor, "workdir": "work"}]},
        "executors[0].stdin": {"executors": [{**executor, "stdin": "in.txt"}]},
        "executors[0].stdout": {"executors": [{**executor, "stdout": "out.txt"}]},
        "executors[0].stderr": {"executors": [{**executor, "stderr": "err.txt"}]},
    }
    for field, fields in cases.items():
        assert_tes_error(await post(client, task_body(**fields)), 400, field, "absolute")


async def test_container_path_with_dotdot_segment_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"content": "x", "path": "/data/../etc/passwd"}])
    assert_tes_error(await post(client, body), 400, "inputs[0].path")


async def test_container_path_with_a_colon_or_comma_is_400_not_a_later_system_error(
    client: httpx.AsyncClient,
) -> None:
    """Runtimes split mount specs on ':' and ','; such a task used to be accepted and then die as SYSTEM_ERROR."""
    body = task_body(outputs=[{"url": "http://h/f", "path": "/out/a:b"}], volumes=["/v,w"])
    assert_tes_error(await post(client, body), 400, "outputs[0].path", "volumes[0]", "':' or ','")


async def test_workdir_slash_is_accepted(client: httpx.AsyncClient) -> None:
    """Pulsar's TES client (Galaxy) sends workdir "/" on every executor."""
    body = task_body(executors=[{"image": "alpine", "command": ["pwd"], "workdir": "/"}])
    assert (await post(client, body)).status_code == 200


async def test_an_image_that_is_not_a_reference_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(executors=[{"image": "--privileged", "command": ["id"]}])
    assert_tes_error(await post(client, body), 400, "executors[0].image", "not an image reference")


async def test_a_system_directory_as_volume_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, task_body(volumes=["/usr"])), 400, "volumes[0]", "system directory")


async def test_every_problem_of_a_task_is_named_in_one_answer(client: httpx.AsyncClient) -> None:
    body = task_body(
        inputs=[{"path": "rel"}],
        executors=[{"image": "alpine", "command": ["true"], "env": {"A-B": "x"}}],
        resources={"cpu_cores": -1},
    )
    assert_tes_error(
        await post(client, body),
        400,
        "inputs[0].path",
        "inputs[0]: url or content",
        "executors[0].env",
        "resources.cpu_cores",
    )


async def test_input_without_url_or_content_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, task_body(inputs=[{"path": "/data/f"}])), 400, "inputs[0]", "url")


async def test_input_with_both_url_and_content_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"path": "/data/f", "url": "http://h/f", "content": "x"}])
    assert_tes_error(await post(client, body), 400, "inputs[0]", "not both")


async def test_input_content_of_128_kib_is_always_accepted(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"path": "/data/script.sh", "content": "x" * (128 * KIB)}])
    assert (await post(client, body)).status_code == 200


async def test_input_content_over_the_configured_limit_is_400(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(api={"max_content_bytes": 128 * KIB})
    body = task_body(inputs=[{"path": "/data/f", "content": "x" * (128 * KIB + 1)}])
    async with client_for(settings) as client:
        assert_tes_error(await post(client, body), 400, "inputs[0].content")


async def test_input_url_with_unsupported_scheme_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"path": "/data/f", "url": "gopher://h/f"}])
    assert_tes_error(await post(client, body), 400, "inputs[0].url")


async def test_output_url_with_unsupported_scheme_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(outputs=[{"path": "/data/f", "url": "gopher://h/f"}])
    assert_tes_error(await post(client, body), 400, "outputs[0].url")


async def test_wildcard_output_with_path_prefix_is_accepted(client: httpx.AsyncClient) -> None:
    body = task_body(outputs=[{"path": "/out/*.txt", "path_prefix": "/out/", "url": "http://h/dir/"}])
    assert (await post(client, body)).status_code == 200


async def test_wildcard_output_without_path_prefix_is_accepted(client: httpx.AsyncClient) -> None:
    """Nextflow sends glob outputs without path_prefix; the directory before the wildcard is the prefix."""
    body = task_body(outputs=[{"path": "/work/out/*.txt", "url": "http://h/dir/"}])
    assert (await post(client, body)).status_code == 200


async def test_path_prefix_that_is_not_a_prefix_of_the_path_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(outputs=[{"path": "/out/*.txt", "path_prefix": "/elsewhere/", "url": "http://h/dir/"}])
    assert_tes_error(await post(client, body), 400, "outputs[0].path_prefix")


async def test_backend_parameters_keys_are_case_insensitive(client: httpx.AsyncClient) -> None:
    body = task_body(resources={"backend_parameters": {"PULSAR_SERVER": "default"}})
    task_id = (await post(client, body)).json()["id"]
    task = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).json()
    assert task["resources"]["backend_parameters"] == {"pulsar_server": "default"}
    assert "logs" not in task


async def test_unsupported_backend_parameters_are_dropped_with_a_warning(client: httpx.AsyncClient) -> None:
    body = task_body(resources={"backend_parameters": {"VmSize": "Standard_D64_v3", "pulsar_server": "a"}})
    task_id = (await post(client, body)).json()["id"]
    task = (await client.get(f"{BASE}/tasks/{task_id}", params={"view": "FULL"})).json()
    assert task["resources"]["backend_parameters"] == {"pulsar_server": "a"}
    assert any("VmSize" in line for line in task["logs"][0]["system_logs"])


async def test_unsupported_backend_parameters_with_strict_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(resources={"backend_parameters": {"VmSize": "x"}, "backend_parameters_strict": True})
    assert_tes_error(await post(client, body), 400, "backend_parameters", "VmSize")


async def test_unknown_field_is_400_naming_it(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, task_body(colour="blue")), 400, "colour", "unknown field")


async def test_unknown_nested_field_is_400_naming_it(client: httpx.AsyncClient) -> None:
    body = task_body(executors=[{"image": "alpine", "command": ["true"], "gpu": True}])
    assert_tes_error(await post(client, body), 400, "executors[0].gpu")


async def test_unknown_fields_are_dropped_when_reject_unknown_fields_is_off(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(api={"reject_unknown_fields": False})
    body = task_body(colour="blue", executors=[{"image": "alpine", "command": ["true"], "gpu": True}])
    async with client_for(settings) as client:
        response = await post(client, body)
        assert response.status_code == 200
        task = (await client.get(f"{BASE}/tasks/{response.json()['id']}", params={"view": "FULL"})).json()
    assert "colour" not in task
    assert task["executors"] == [{"image": "alpine", "command": ["true"]}]


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{BASE}/tasks", content=b'{"executors": [', headers={"content-type": "application/json"}
    )
    assert_tes_error(response, 400, "JSON")


async def test_json_that_is_not_an_object_is_400(client: httpx.AsyncClient) -> None:
    assert_tes_error(await post(client, [task_body()]), 400, "object")


async def test_empty_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/tasks", headers={"content-type": "application/json"})
    assert_tes_error(response, 400)


async def test_non_json_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/tasks", data={"executors": "x"})  # a form post
    assert_tes_error(response, 415, "application/json")


async def test_body_declared_larger_than_max_body_bytes_is_413(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(api={"max_body_bytes": 64 * KIB})
    body = task_body(inputs=[{"path": "/data/f", "content": "x" * (65 * KIB)}])
    async with client_for(settings) as client:
        assert_tes_error(await post(client, body), 413)


async def test_streamed_body_larger_than_max_body_bytes_is_413(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    """A chunked upload carries no Content-Length: the bytes are counted as they arrive."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"executors": [{"image": "alpine", "command": ["echo", "'
        for _ in range(80):
            yield b"x" * KIB
        yield b'"]}]}'

    settings = make_settings(api={"max_body_bytes": 64 * KIB})
    async with client_for(settings) as client:
        response = await client.post(
            f"{BASE}/tasks", content=chunks(), headers={"content-type": "application/json"}
        )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_tes_error(response, 413)


async def test_rejected_task_is_not_stored(client: httpx.AsyncClient, store: SqliteTaskStore) -> None:
    await post(client, task_body(executors=[]))
    assert await store.count() == 0


async def test_deeply_nested_json_is_400_not_500(client: httpx.AsyncClient) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = await client.post(f"{BASE}/tasks", content=body, headers={"content-type": "application/json"})
    assert_tes_error(response, 400)


async def test_a_number_too_long_for_python_to_convert_is_400_not_500(client: httpx.AsyncClient) -> None:
    body = b'{"resources":{"cpu_cores":' + b"1" * 5000 + b'},"executors":[{"image":"a","command":["x"]}]}'
    response = await client.post(f"{BASE}/tasks", content=body, headers={"content-type": "application/json"})
    assert_tes_error(response, 400, "invalid JSON")


async def test_path_prefix_of_an_output_without_wildcards_is_ignored(client: httpx.AsyncClient) -> None:
    body = task_body(outputs=[{"path": "/out/a.txt", "path_prefix": "", "url": "http://h/a.txt"}])
    assert (await post(client, body)).status_code == 200


async def test_directory_input_with_content_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"path": "/data/d", "content": "x", "type": "DIRECTORY"}])
    assert_tes_error(await post(client, body), 400, "inputs[0]", "DIRECTORY")


class WakeRecorder:
    """Records only that the API called the engine's optional ``notify_created`` hook (the engine's
    own behaviour is tested in tests/engine)."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def notify_created(self, task_id: str) -> None:
        self.created.append(task_id)


async def test_create_wakes_an_engine_that_offers_notify_created(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    engine = WakeRecorder()
    async with client_for(make_settings(), engine=engine) as client:
        task_id = (await post(client, task_body())).json()["id"]
    assert engine.created == [task_id]


async def test_file_url_outside_the_allowed_directories_is_400(client: httpx.AsyncClient) -> None:
    body = task_body(inputs=[{"path": "/data/f", "url": "file:///etc/passwd"}])
    assert_tes_error(await post(client, body), 400, "inputs[0].url")


async def test_file_url_inside_an_allowed_directory_is_accepted(
    client_for: Callable[..., httpx.AsyncClient], tmp_path: Path
) -> None:
    settings = make_settings(transfer={"allowed_dirs": [str(tmp_path)]})
    body = task_body(inputs=[{"path": "/data/f", "url": f"file://{tmp_path}/f.txt"}])
    async with client_for(settings) as client:
        assert (await post(client, body)).status_code == 200


async def test_scheme_disabled_in_settings_is_400(client_for: Callable[..., httpx.AsyncClient]) -> None:
    settings = make_settings(transfer={"schemes": ["http", "https"]})
    body = task_body(outputs=[{"path": "/data/f", "url": "s3://bucket/key"}])
    async with client_for(settings) as client:
        assert_tes_error(await post(client, body), 400, "outputs[0].url")
