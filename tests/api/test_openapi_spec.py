"""The TES schemas of our OpenAPI document are the TES 1.1 spec's, field by field.

The spec is ../shared/spec/tes-1.1.openapi.yaml (beside the repository, as CI lays it out). For
every component schema of the spec, ours has the same properties, each of the same type (refs to
the same component, items, map values, enums), the same required fields, readOnly marks, formats
and defaults. The only differences allowed are the documented extensions in ``EXTENSIONS`` below
(and in docs/api.md "The OpenAPI document").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tesp_api.api import openapi, routes

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "tes-1.1.openapi.yaml"

# Where the spec refers to the GA4GH service-info 1.0.0 document by URL (which cannot be followed
# offline), our document inlines it; these are service-info 1.0.0's Service and ServiceType.
SERVICE_INFO_1_0: dict[str, dict[str, Any]] = {
    "Service": {
        "type": "object",
        "required": ["id", "name", "type", "organization", "version"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "type": {"$ref": "#/components/schemas/ServiceType"},
            "description": {"type": "string"},
            "organization": {"$ref": "#/components/schemas/ServiceOrganization"},
            "contactUrl": {"type": "string"},
            "documentationUrl": {"type": "string"},
            "createdAt": {"type": "string"},
            "updatedAt": {"type": "string"},
            "environment": {"type": "string"},
            "version": {"type": "string"},
        },
    },
    "ServiceType": {
        "type": "object",
        "required": ["group", "artifact", "version"],
        "properties": {
            "group": {"type": "string"},
            "artifact": {"type": "string"},
            "version": {"type": "string"},
        },
    },
}

# Documented extensions: (schema, property) -> why ours differs from the spec.
EXTENSIONS = {
    ("tesListTasksResponse", "tasks"): "items are tesTaskView: a MINIMAL task has only id and state",
    # The spec restricts tesServiceType.artifact to "tes" (an enum); ours is the plain service-info
    # string, and the served value is always "tes" (tests/api/test_service_info.py).
    ("tesServiceType", "artifact"): "a string, always 'tes'",
}
# Documented extensions that add a property: (schema, property) -> what it is.
ADDED = {("tesTask", "callback_url"): "signed status callbacks (TES proposal #176, docs/callbacks.md)"}
REFS_RENAMED = {"ServiceType": "tesServiceType"}  # service-info 1.0's ServiceType is tesServiceType here


def _spec() -> dict[str, Any]:
    if not SPEC.is_file():
        pytest.skip(f"the TES spec is not beside the repository: {SPEC}")
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def _flatten(schema: dict[str, Any]) -> dict[str, Any]:
    """A spec schema built with allOf (external service-info $ref + local part) as one object."""
    if "allOf" not in schema:
        return schema
    merged: dict[str, Any] = {"type": "object", "required": [], "properties": {}}
    for part in schema["allOf"]:
        if "$ref" in part:
            part = _flatten(SERVICE_INFO_1_0[part["$ref"].rsplit("/", 1)[-1]])
        merged["required"] += [r for r in part.get("required", []) if r not in merged["required"]]
        for name, prop in part.get("properties", {}).items():
            merged["properties"][name] = prop  # the local part refines (TES's type: tesServiceType)
    return merged


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """What a client relies on: type, ref target, items, map values, enum, readOnly, format, default."""
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[-1]
        return {"ref": REFS_RENAMED.get(target, target), "readOnly": bool(schema.get("readOnly"))}
    shape: dict[str, Any] = {"type": schema.get("type"), "readOnly": bool(schema.get("readOnly"))}
    if "items" in schema:
        shape["items"] = _shape(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        shape["values"] = _shape(schema["additionalProperties"])
    if "enum" in schema:
        shape["enum"] = sorted(schema["enum"])
    if schema.get("format") not in (None, "boolean"):  # the spec's "format: boolean" means nothing
        shape["format"] = schema["format"]
    if "default" in schema:
        shape["default"] = schema["default"]
    return shape


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    served: dict[str, Any] = (await client.get("/openapi.json")).json()
    return served


def _component_names() -> list[str]:
    spec = yaml.safe_load(SPEC.read_text()) if SPEC.is_file() else {"components": {"schemas": {"spec": {}}}}
    return sorted(spec["components"]["schemas"])


@pytest.mark.parametrize("name", _component_names())
async def test_the_component_schema_matches_the_tes_spec_field_by_field(
    document: dict[str, Any], name: str
) -> None:
    theirs = _flatten(_spec()["components"]["schemas"][name])
    ours = document["components"]["schemas"].get(name)
    assert ours is not None, f"{name} is missing from our document"
    assert ours.get("type") == theirs.get("type")
    assert sorted(ours.get("enum", [])) == sorted(theirs.get("enum", []))
    assert set(ours.get("required", [])) == set(theirs.get("required", []))
    assert bool(ours.get("readOnly")) == bool(theirs.get("readOnly"))
    assert ours.get("default") == theirs.get("default")
    their_props, our_props = theirs.get("properties", {}), ours.get("properties", {})
    assert set(our_props) - {p for (n, p) in ADDED if n == name} == set(their_props)
    for prop in their_props:
        if (name, prop) in EXTENSIONS:
            continue
        assert _shape(our_props[prop]) == _shape(their_props[prop]), f"{name}.{prop}"


async def test_the_task_view_extension_is_a_task_whose_executors_may_be_absent(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    view, task = schemas["tesTaskView"], schemas["tesTask"]
    assert view["properties"] == task["properties"]
    assert view["required"] == ["id", "state"]
    assert schemas["tesListTasksResponse"]["properties"]["tasks"]["items"] == {
        "$ref": "#/components/schemas/tesTaskView"
    }


async def test_the_documented_page_size_bound_is_the_servers(document: dict[str, Any]) -> None:
    assert openapi.MAX_PAGE == routes.MAX_PAGE_SIZE
    params = {p["name"]: p for p in document["paths"]["/ga4gh/tes/v1/tasks"]["get"]["parameters"]}
    assert params["page_size"]["schema"]["maximum"] == routes.MAX_PAGE_SIZE


async def test_every_spec_operation_is_in_our_document_with_its_operation_id(
    document: dict[str, Any],
) -> None:
    spec = _spec()
    prefix = spec["servers"][0]["url"]
    theirs = {
        (prefix + path, method, op["operationId"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    ours = {
        (path, method, op["operationId"])
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert theirs <= ours
