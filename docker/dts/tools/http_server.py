"""A small HTTP file server for data-transfer tests of tesp-api (the `dts-http` service).

GET/HEAD serve files below the data root (tesp-api's http inputs), PUT stores the request body at
the path (http outputs, as tesp-api uploads them), DELETE removes a file. Writing needs
``Authorization: Bearer $DTS_HTTP_TOKEN``, so the example also shows tesp-api's per-host
credentials (transfer.http). Bodies are streamed to disk, never held in memory; a path that would
leave the data root answers 400.

Environment: DTS_HTTP_ROOT (default /data), DTS_HTTP_TOKEN (required), DTS_HTTP_HOST (0.0.0.0),
DTS_HTTP_PORT (8000).
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
import tempfile
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("dts-http")


class UnsafePath(ValueError):
    """The URL path names something outside the data root."""


def resolve(root: Path, url_path: str) -> Path:
    """The file a URL path names, refusing anything that would leave ``root`` (``..``, symlinks out)."""
    parts = [p for p in url_path.split("/") if p not in ("", ".")]
    if any(p == ".." or "\x00" in p for p in parts):
        raise UnsafePath(url_path)
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise UnsafePath(url_path)
    return target


def build_app(root: Path, token: str) -> Starlette:
    root = root.resolve()

    def authorized(request: Request) -> bool:
        sent = request.headers.get("authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())

    async def handle(request: Request) -> Response:
        try:
            target = resolve(root, request.path_params["path"])
        except UnsafePath:
            return PlainTextResponse("bad path\n", status_code=400)
        if request.method in ("GET", "HEAD"):
            if not target.is_file():
                return PlainTextResponse("not found\n", status_code=404)
            return FileResponse(target)
        if not authorized(request):
            return PlainTextResponse(
                "unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        if request.method == "DELETE":
            if not target.is_file():
                return PlainTextResponse("not found\n", status_code=404)
            target.unlink()
            return Response(status_code=204)
        if target == root or target.is_dir():
            return PlainTextResponse("cannot write a directory\n", status_code=409)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        log.info("stored %s (%d bytes)", target.relative_to(root), target.stat().st_size)
        return Response(status_code=201)

    methods = ["GET", "HEAD", "PUT", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = os.environ.get("DTS_HTTP_TOKEN", "")
    if not token:
        log.error("DTS_HTTP_TOKEN is not set (docker/dts/.env)")
        return 64
    root = Path(os.environ.get("DTS_HTTP_ROOT", "/data"))
    root.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("DTS_HTTP_HOST", "0.0.0.0")  # a container: listen on all its addresses
    port = int(os.environ.get("DTS_HTTP_PORT", "8000"))
    uvicorn.run(build_app(root, token), host=host, port=port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
