"""The OpenAPI document, true to what the server answers (docs/api.md "The OpenAPI document").

FastAPI's generated document says two false things about this service: every operation with a
parameter may answer ``422 HTTPValidationError`` (the error handlers answer 400 ErrorResponse), and
the TES objects are pydantic's (nullable ``anyOf [T, null]``, ``Tes*`` names). Here the document is
built once per app and corrected:

- component schemas are generated from the models the service uses (``tesp_api.tes.models``),
  renamed to the spec's names (``tesTask``...), with the nulls the server never sends removed and
  the spec's ``readOnly`` / ``required`` marks; a test compares them field by field with the TES 1.1
  spec (tests/api/test_openapi_spec.py);
- every operation lists the errors it really answers with ``ErrorResponse`` (routes.py declares
  them; 401 is added here when authentication is on) and 422 is gone;
- documented extensions: ``tesTaskView`` (a task as GetTask/ListTasks answer it: every view has
  ``id`` and ``state``, only BASIC/FULL the rest, so ``executors`` is not required there),
  ``ErrorResponse`` and ``ServiceOrganization`` (the service-info 1.0 organization object, inlined
  because the spec's external ``$ref`` cannot be followed offline).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from tesp_api.auth.effective import effective_auth_settings
from tesp_api.auth.openapi import add_security
from tesp_api.config.settings import Settings
from tesp_api.tes.models import TesCreateTaskResponse, TesServiceInfo, TesState, TesTask, TesView

REF = "#/components/schemas/"
ERROR_SCHEMA = "ErrorResponse"
TASK_VIEW_SCHEMA = "tesTaskView"
MAX_PAGE = 2047  # routes.MAX_PAGE_SIZE (routes imports this module)

# The spec's marks that pydantic cannot know: readOnly (set by the server), formats and defaults.
_READ_ONLY = {"tesTask": ("id", "logs", "creation_time")}
_FORMATS = {
    ("tesExecutorLog", "exit_code"): "int32",
    ("tesOutputFileLog", "size_bytes"): "int64",
    ("tesResources", "cpu_cores"): "int32",
    ("tesResources", "ram_gb"): "double",
    ("tesResources", "disk_gb"): "double",
}
_DEFAULTS: dict[tuple[str, str | None], Any] = {
    ("tesFileType", None): "FILE",
    ("tesState", None): "UNKNOWN",
    ("tesResources", "backend_parameters_strict"): False,
}
_ERROR_DESCRIPTIONS = {
    400: "Bad request: a parameter or the task document is invalid",
    401: "Unauthorized: missing or invalid credentials",
    404: "The task does not exist (or is not the caller's)",
    409: "Conflict: a cancel raced with state changes, or an Idempotency-Key reused with another body",
    413: "The request body is larger than api.max_body_bytes",
    415: "The request body is not application/json",
    503: "The task store (or the identity provider) is unavailable: retry later",
}


def spec_name(model_name: str) -> str:
    """``TesTask`` -> ``tesTask`` (the spec's component names); others keep their name."""
    if model_name == "TesServiceOrganization":
        return "ServiceOrganization"
    if model_name.startswith("Tes"):
        return "tes" + model_name[3:]
    return model_name


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error statuses, each an ErrorResponse."""
    return {
        status: {
            "description": _ERROR_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": f"{REF}{ERROR_SCHEMA}"}}},
        }
        for status in statuses
    }


def ok_response(schema: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "Successful Response",
            "content": {"application/json": {"schema": {"$ref": f"{REF}{schema}"}}},
        }
    }


def _normalise(node: Any, *, keep_closed: bool) -> Any:
    """pydantic's JSON schema -> the spec's style: no titles, no ``anyOf [T, null]`` (responses are
    serialised with exclude_none, so null never leaves the server), refs renamed."""
    if isinstance(node, list):
        return [_normalise(item, keep_closed=keep_closed) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False and not keep_closed:
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = REF + spec_name(value.rsplit("/", 1)[-1])
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _normalise(prop, keep_closed=keep_closed) for name, prop in value.items()}
            continue
        out[key] = _normalise(value, keep_closed=keep_closed)
    alternatives = out.get("anyOf")
    if isinstance(alternatives, list):
        others = [alt for alt in alternatives if alt != {"type": "null"}]
        if len(others) == 1 and len(others) < len(alternatives):
            del out["anyOf"]
            out = {**others[0], **out}
    return out


def _always_serialised(model: type[BaseModel]) -> list[str]:
    """Fields with a non-None default (``default_factory=list``): exclude_none keeps them, so
    every answer has them (tesTaskLog's ``logs`` and ``outputs``, as the spec requires)."""
    return [name for name, field in model.model_fields.items() if field.default_factory is not None]


def tes_component_schemas(settings: Settings) -> dict[str, Any]:
    """The TES schemas of the document, generated from the models and put in the spec's shape."""
    keep_closed = settings.api.reject_unknown_fields
    raw: dict[str, Any] = {}
    models: dict[str, type[BaseModel]] = {}
    roots: tuple[type[BaseModel], ...] = (TesTask, TesServiceInfo, TesCreateTaskResponse)
    for root in roots:
        schema = root.model_json_schema(ref_template=REF + "{model}", mode="serialization")
        raw.update(schema.pop("$defs", {}))
        raw[root.__name__] = schema
        models.update(_nested_models(root))
    schemas: dict[str, Any] = {}
    for name, schema in raw.items():
        normalised = _normalise(schema, keep_closed=keep_closed)
        found = models.get(name)
        if found is not None:
            required = list(normalised.get("required", []))
            required += [f for f in _always_serialised(found) if f not in required]
            if required:
                normalised["required"] = required
        schemas[spec_name(name)] = normalised
    for schema_name, fields in _READ_ONLY.items():
        for field_name in fields:
            schemas[schema_name]["properties"][field_name]["readOnly"] = True
    schemas["tesState"]["readOnly"] = True
    for (schema_name, field_name), fmt in _FORMATS.items():
        schemas[schema_name]["properties"][field_name]["format"] = fmt
    for (schema_name, maybe_field), default in _DEFAULTS.items():
        target = (
            schemas[schema_name] if maybe_field is None else schemas[schema_name]["properties"][maybe_field]
        )
        target["default"] = default
    view = copy.deepcopy(schemas["tesTask"])
    view["required"] = ["id", "state"]
    view["description"] = (
        "A task as GetTask and ListTasks answer it: MINIMAL has only id and state, BASIC and FULL "
        "the rest (tesp-api extension of tesTask, whose executors are required in requests)"
    )
    schemas[TASK_VIEW_SCHEMA] = view
    schemas["tesListTasksResponse"] = {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "items": {"$ref": f"{REF}{TASK_VIEW_SCHEMA}"}},
            "next_page_token": {"type": "string"},
        },
    }
    schemas["tesCancelTaskResponse"] = {"type": "object"}
    schemas[ERROR_SCHEMA] = {
        "type": "object",
        "required": ["msg", "status_code"],
        "properties": {"msg": {"type": "string"}, "status_code": {"type": "integer"}},
        "description": "GA4GH ErrorResponse: every error of this service has this shape",
    }
    return schemas


def _nested_models(annotation: Any) -> dict[str, type[BaseModel]]:
    """The pydantic models inside a field annotation (``list[TesInput] | None`` -> TesInput...)."""
    found: dict[str, type[BaseModel]] = {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found[annotation.__name__] = annotation
        for field in annotation.model_fields.values():
            found.update(_nested_models(field.annotation))
        return found
    for arg in getattr(annotation, "__args__", ()) or ():
        found.update(_nested_models(arg))
    return found


def _fix_parameters(document: dict[str, Any]) -> None:
    """Parameters in the spec's style (an absent parameter is not a null one), and the ones the
    handlers parse themselves say what they accept (anything else is a 400)."""
    views = {"type": "string", "enum": [v.value for v in TesView]}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _normalise(parameter.get("schema", {}), keep_closed=True)
                name = parameter.get("name")
                if name == "view":
                    parameter["schema"] = {**views, "default": TesView.MINIMAL.value}
                elif name == "state" and operation.get("operationId") == "ListTasks":
                    parameter["schema"] = {"type": "string", "enum": [s.value for s in TesState]}
                elif name == "page_size":
                    parameter["schema"] = {
                        "type": "integer",
                        "format": "int32",
                        "minimum": 1,
                        "maximum": MAX_PAGE,
                    }


def _drop_422(document: dict[str, Any]) -> None:
    """FastAPI adds 422 HTTPValidationError wherever there are parameters; this service answers 400."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_auth_errors(document: dict[str, Any]) -> None:
    """With authentication on, every operation that needs credentials may answer 401."""
    if "security" not in document:
        return
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if {} in operation.get("security", []):
                continue  # service-info when auth.service_info_public: no credentials needed
            responses = operation.setdefault("responses", {})
            for status, answer in error_responses(401, 503).items():
                responses.setdefault(str(status), answer)


def _add_links(document: dict[str, Any]) -> None:
    """OpenAPI links: the id CreateTask answers is the one GetTask and CancelTask take (generated
    clients and schemathesis' stateful phase follow them)."""
    for path_item in document.get("paths", {}).values():
        create = path_item.get("post", {})
        if create.get("operationId") == "CreateTask":
            create["responses"]["200"]["links"] = {
                target: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
                for target in ("GetTask", "CancelTask")
            }


# A task every deployment accepts: Swagger UI's "Try it out" starts from it (the sample it would
# build from the schema alone is refused: relative paths, empty image).
CREATE_TASK_EXAMPLE: dict[str, Any] = {
    "name": "hello",
    "executors": [{"image": "alpine:3.20", "command": ["echo", "hello, TES"]}],
    "tags": {"project": "demo"},
}


def _add_examples(document: dict[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        create = path_item.get("post", {})
        if create.get("operationId") == "CreateTask":
            create["requestBody"]["content"]["application/json"]["example"] = CREATE_TASK_EXAMPLE


def build_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(tes_component_schemas(settings))
    _drop_422(document)
    _fix_parameters(document)
    _add_links(document)
    _add_examples(document)
    add_security(document, effective_auth_settings(settings))
    _add_auth_errors(document)
    return document


def install_openapi(app: FastAPI) -> None:
    """``app.openapi`` builds the corrected document once and keeps it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, app.state.settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
