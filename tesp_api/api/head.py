"""HEAD answers like GET without a body, on every GET endpoint (issue 13; RFC 9110 9.3.2).

FastAPI routes registered for GET answer HEAD with 405, and clients and probes (load balancers,
link checkers, ``curl -I``) use HEAD to ask whether a task or page exists. Rather than list HEAD
on each route, this ASGI middleware runs a HEAD request as the GET it stands for and drops the
body: status and headers (Content-Length, Content-Type, Cache-Control, ETag...) are exactly the
GET's, so the two can never disagree. A path without GET still answers 405.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # only the last (empty) body message is sent
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)
