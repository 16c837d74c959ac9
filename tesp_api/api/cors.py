"""CORS for browser apps on other origins (``api.cors_origins``; off when empty).

Starlette's CORSMiddleware, with two choices made for an API whose callers are untrusted:

- ``allow_credentials`` stays false: a page on an allowed origin must send its own
  ``Authorization`` header (a bearer token, or Basic typed by its user). The browser then never
  attaches credentials it cached for tesp-api itself (the Basic prompt of /dashboard), so a listed
  origin cannot act as a signed-in user without that user's consent, and ``"*"`` stays safe.
- a refused preflight (origin, method or header not allowed) is answered as a TES ErrorResponse,
  like every other error of the service, instead of Starlette's plain text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key")
PREFLIGHT_MAX_AGE = 600


class TesCorsMiddleware(CORSMiddleware):
    """CORSMiddleware whose refused preflights are ``{"msg", "status_code"}`` JSON."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS),
            allow_credentials=False,
            max_age=PREFLIGHT_MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        msg = bytes(response.body).decode("utf-8", "replace") or "CORS preflight refused"
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        body = json.dumps({"msg": msg, "status_code": response.status_code})
        return Response(
            body, status_code=response.status_code, headers=headers, media_type="application/json"
        )
