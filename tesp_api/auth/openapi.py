"""The OpenAPI ``securitySchemes`` for the enabled modes, so Swagger UI (at /) offers "Authorize"
with a username/password and/or a pasted bearer token. Plain dicts: no FastAPI needed here."""

from __future__ import annotations

from typing import Any

from tesp_api.config.settings import AuthSettings

BASIC_SCHEME = "basicAuth"
BEARER_SCHEME = "bearerAuth"


def security_schemes(auth: AuthSettings) -> dict[str, dict[str, Any]]:
    schemes: dict[str, dict[str, Any]] = {}
    if "basic" in auth.mode:
        schemes[BASIC_SCHEME] = {"type": "http", "scheme": "basic", "description": "a user of auth.users"}
    if "oidc" in auth.mode:
        issuers = ", ".join(i.issuer for i in auth.issuers)
        schemes[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": f"an access token from: {issuers}",
        }
    return schemes


def add_security(document: dict[str, Any], auth: AuthSettings) -> dict[str, Any]:
    """Declare the schemes and require one of them everywhere (OpenAPI: a list of alternatives);
    GetServiceInfo also allows no credentials when auth.service_info_public is true."""
    schemes = security_schemes(auth)
    if not schemes:
        return document
    document.setdefault("components", {}).setdefault("securitySchemes", {}).update(schemes)
    alternatives: list[dict[str, list[str]]] = [{name: []} for name in schemes]
    document["security"] = alternatives
    if auth.service_info_public:
        for path_item in document.get("paths", {}).values():
            operation = path_item.get("get", {}) if isinstance(path_item, dict) else {}
            if operation.get("operationId") == "GetServiceInfo":
                operation["security"] = [{}, *alternatives]
    return document
