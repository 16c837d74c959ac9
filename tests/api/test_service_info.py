"""GET /service-info: GA4GH service-info 1.0 + TES 1.1 fields, from settings."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

import tesp_api
from tesp_api.tes.models import TesServiceInfo
from tests.api.conftest import BASE, make_settings


async def test_service_info_has_the_ga4gh_tes_type(client: httpx.AsyncClient) -> None:
    info = (await client.get(f"{BASE}/service-info")).json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}


async def test_service_info_has_every_required_service_info_field(client: httpx.AsyncClient) -> None:
    info = (await client.get(f"{BASE}/service-info")).json()
    assert {"id", "name", "type", "organization", "version"} <= set(info)
    assert set(info["organization"]) == {"name", "url"}
    TesServiceInfo.model_validate(info)  # nothing outside the spec


async def test_service_info_version_is_the_package_version(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{BASE}/service-info")).json()["version"] == tesp_api.__version__


async def test_service_info_lists_the_supported_backend_parameters(client: httpx.AsyncClient) -> None:
    info = (await client.get(f"{BASE}/service-info")).json()
    assert info["tesResources_backend_parameters"] == ["pulsar_server"]


@pytest.mark.parametrize("path", ["/service-info", "/v1/service-info", f"{BASE}/service-info"])
async def test_service_info_is_served_at_every_path_clients_use(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.json()["type"]["artifact"] == "tes"


async def test_service_info_values_come_from_settings(client_for: Callable[..., httpx.AsyncClient]) -> None:
    settings = make_settings(
        service_info={
            "id": "org.example.tes",
            "name": "Example TES",
            "organization_name": "Example",
            "organization_url": "https://example.org",
            "contact_url": "mailto:ops@example.org",
            "environment": "test",
            "storage": ["s3://example-bucket"],
        }
    )
    async with client_for(settings) as client:
        info = (await client.get(f"{BASE}/service-info")).json()
    assert info["id"] == "org.example.tes"
    assert info["name"] == "Example TES"
    assert info["organization"] == {"name": "Example", "url": "https://example.org"}
    assert info["contactUrl"] == "mailto:ops@example.org"
    assert info["environment"] == "test"
    assert info["storage"] == ["s3://example-bucket"]


async def test_storage_is_derived_from_the_transfer_settings_when_not_configured(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    settings = make_settings(transfer={"allowed_dirs": ["/data/shared"], "s3": [{"bucket": "results"}]})
    async with client_for(settings) as client:
        info = (await client.get(f"{BASE}/service-info")).json()
    assert info["storage"] == ["file:///data/shared", "s3://results"]
