"""Who is an administrator (sees and cancels every task): the rules from the settings in one place."""

from __future__ import annotations

from typing import Any

from tesp_api.config.settings import AuthSettings, OidcIssuer

_SPACE_SEPARATED_CLAIMS = {"scope", "scp"}  # RFC 8693: scope is one space-separated string


def claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The string values at a dotted claim path (``realm_access.roles`` for Keycloak); [] if absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return value.split() if path.rsplit(".", 1)[-1] in _SPACE_SEPARATED_CLAIMS else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def token_holder_is_admin(
    auth: AuthSettings, issuer: OidcIssuer, subject: str, claims: dict[str, Any]
) -> bool:
    if subject in issuer.admin_subjects or subject in auth.admin_subjects:
        return True
    if auth.admin_values:
        return bool(set(claim_values(claims, auth.admin_claim)) & set(auth.admin_values))
    return False


def basic_user_is_admin(auth: AuthSettings, username: str, flagged_admin: bool) -> bool:
    return flagged_admin or username in auth.admin_subjects
