"""Who is calling: the one seam between the HTTP layer and authentication.

Every route takes a :class:`Principal` from :func:`current_principal`; it passes
``owner=None if principal.is_admin else principal.owner`` to the store when reading and stores
``principal.owner`` on create. With authentication off everybody is an anonymous admin.

The checking itself lives in ``tesp_api.auth`` (no FastAPI there); this module only hands it the
``Authorization`` header and turns its errors into TES-shaped 401/503 answers with
``WWW-Authenticate``.
"""

from __future__ import annotations

from fastapi import Request

from tesp_api.api.errors import TesHttpError
from tesp_api.auth.errors import AuthError
from tesp_api.auth.principal import ANONYMOUS_ADMIN, Principal

__all__ = ["ANONYMOUS_ADMIN", "Principal", "current_principal", "service_info_principal"]


async def current_principal(request: Request) -> Principal:
    """The caller, authenticated by ``request.app.state.authenticator`` (None: auth off)."""
    authenticator = getattr(request.app.state, "authenticator", None)
    if authenticator is None:
        return ANONYMOUS_ADMIN
    try:
        client = request.client.host if request.client else None  # for failed-login throttling
        principal: Principal = await authenticator.authenticate(request.headers.get("authorization"), client)
    except AuthError as exc:
        headers = {"WWW-Authenticate": exc.www_authenticate} if exc.www_authenticate else None
        if exc.retry_after is not None:  # 503 (issuer unreachable, busy), 429 (throttled login)
            headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
        raise TesHttpError(exc.status_code, exc.message, headers=headers) from None
    return principal


async def service_info_principal(request: Request) -> Principal:
    """service-info is open unless ``auth.service_info_public`` is false (then as any route)."""
    if request.app.state.settings.auth.service_info_public:
        return ANONYMOUS_ADMIN
    return await current_principal(request)
