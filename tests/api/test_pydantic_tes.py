"""What Pulsar's TES client (pulsar-app 0.16 over pydantic-tes 0.4, i.e. Galaxy) sends and reads, in-process.

The client builds its task with pydantic-tes models and POSTs ``model_dump_json()``: every unset field,
output-only ones included, arrives as ``null``. It reads the task back with view FULL and parses it
with pydantic-tes' TesTask, which requires ``executors``. The end-to-end run of the same client is
tests/e2e/test_pulsar_tes_client.py; these tests pin the API contract without Pulsar.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pydantictes_models = pytest.importorskip(
    "pydantictes.models", reason="pydantic-tes (pulsar-app's) is not installed"
)
tes_job_config = pytest.importorskip("pulsar.client.tes_job_config", reason="pulsar-app is not installed")

PREFIX = "/v1"  # pydantic-tes joins urljoin(tes_url, "v1/...")


def galaxy_task_json() -> str:
    """A task shaped as pulsar.client.tes.LaunchesTesContainersMixin shapes it (coexecution: three executors)."""
    m = pydantictes_models
    params = tes_job_config.parse_tes_job_params({"tes_url": "http://tes.test/", "tes_cpu_cores": 1})

    def executor(image: str, command: list[str]) -> Any:
        return m.TesExecutor(image=image, command=command, workdir="/")

    task = m.TesTask(
        name="pulsar-123456",
        executors=[
            executor(
                "galaxy/pulsar-pod-staging:0.15.0.2",
                ["pulsar-submit", "--no-wait", "--base64", "e30=", "--app_conf_base64", "e30="],
            ),
            executor("conda/miniconda3", ["sh", "-c", "sh /pulsar_staging/123456/command_line"]),
            executor(
                "galaxy/pulsar-pod-staging:0.15.0.2",
                ["pulsar-finish", "--base64", "e30=", "--app_conf_base64", "e30="],
            ),
        ],
        volumes=["/pulsar_staging/"],
        resources=tes_job_config.tes_resources(params),
    )
    body: str = task.model_dump_json()
    return body


async def post_galaxy_task(client: httpx.AsyncClient) -> str:
    answer = await client.post(
        f"{PREFIX}/tasks", content=galaxy_task_json(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def test_the_client_really_sends_nulls_for_unset_and_output_only_fields() -> None:
    body = json.loads(galaxy_task_json())
    assert body["id"] is None and body["state"] is None and body["logs"] is None
    assert body["inputs"] is None and body["executors"][0]["env"] is None
    assert body["resources"]["ram_gb"] is None


async def test_a_task_shaped_by_pulsars_tes_client_is_accepted(client: httpx.AsyncClient) -> None:
    await post_galaxy_task(client)


async def test_the_full_view_parses_with_pydantic_tes_and_keeps_what_the_client_sent(
    client: httpx.AsyncClient,
) -> None:
    task_id = await post_galaxy_task(client)
    answer = await client.get(f"{PREFIX}/tasks/{task_id}", params={"view": "FULL"})
    assert answer.status_code == 200, answer.text
    parsed = pydantictes_models.TesTask.model_validate(answer.json())
    assert parsed.id == task_id
    assert parsed.state == pydantictes_models.TesState.QUEUED
    assert [ex.workdir for ex in parsed.executors] == ["/", "/", "/"]
    assert [ex.command[0] for ex in parsed.executors] == ["pulsar-submit", "sh", "pulsar-finish"]
    assert parsed.volumes == ["/pulsar_staging/"]
    assert parsed.resources is not None and parsed.resources.cpu_cores == 1


async def test_no_null_comes_back_in_the_full_view(client: httpx.AsyncClient) -> None:
    task_id = await post_galaxy_task(client)
    text = (await client.get(f"{PREFIX}/tasks/{task_id}", params={"view": "FULL"})).text
    assert "null" not in text


async def test_the_basic_view_parses_with_pydantic_tes(client: httpx.AsyncClient) -> None:
    task_id = await post_galaxy_task(client)
    answer = await client.get(f"{PREFIX}/tasks/{task_id}", params={"view": "BASIC"})
    assert pydantictes_models.TesTask.model_validate(answer.json()).id == task_id


async def test_the_minimal_view_stays_id_and_state_although_pydantic_tes_cannot_parse_it(
    client: httpx.AsyncClient,
) -> None:
    """TES: MINIMAL is id and state only. pydantic-tes needs executors, so Pulsar asks FULL; we keep the spec."""
    task_id = await post_galaxy_task(client)
    answer = await client.get(f"{PREFIX}/tasks/{task_id}", params={"view": "MINIMAL"})
    assert set(answer.json()) == {"id", "state"}
