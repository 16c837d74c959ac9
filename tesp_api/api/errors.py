"""Every error leaves the service as a GA4GH ErrorResponse: ``{"msg": "...", "status_code": N}``.

FastAPI's own answers (422 with a ``detail`` list, plain-text 500) are replaced here: TES clients
expect 400 for a bad request, and a crash must not leak a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tesp_api.store.port import StoreError
from tesp_api.tes.validate import field_path

log = logging.getLogger(__name__)


class TesHttpError(StarletteHTTPException):
    """Raised by routes: becomes an ErrorResponse with this status and message."""

    def __init__(self, status_code: int, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=msg, headers=headers)


def error_response(status_code: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A message quoting client input could hold a lone surrogate, which UTF-8 cannot encode: escape it
    # rather than fail the error answer itself.
    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"msg": msg, "status_code": status_code}, status_code=status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and msg == "Not Found":
        msg = f"not found: {request.url.path}"
    return error_response(exc.status_code, msg, getattr(exc, "headers", None))


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Bad query or path parameters: 400 naming the parameter (never FastAPI's 422)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(400, "invalid request")
    err = errors[0]
    loc = [p for p in err.get("loc", ()) if p not in ("query", "path", "body", "header")]
    return error_response(400, f"{field_path(loc)}: {err.get('msg', 'invalid value')}")


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """The task store failed (database down, locked too long): a retryable 503, details in the log."""
    log.error("task store error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "the task store is unavailable, try again later")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(Exception, _unexpected_error)
