"""URL parsing shared by validation, the scheme backends and output planning."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("file", "http", "https", "ftp", "s3")


def scheme_of(url: str) -> str:
    """The lower-case scheme; a plain absolute path counts as ``file``; ``""`` when there is none."""
    if url.startswith("/"):
        return "file"
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def local_path_of(url: str) -> str:
    """The host path named by a ``file://`` URL or a plain absolute path (percent-decoded)."""
    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError("file URLs must not name a host")
    return unquote(parts.path)


def resolve_inside(path: str, allowed_dirs: list[str]) -> Path | None:
    """``path`` with symlinks and ``..`` resolved, if that lands inside one of ``allowed_dirs``.

    ``os.path.realpath`` also works for paths that do not exist yet (outputs): it resolves the
    existing part and normalises the rest, so ``/allowed/new/../../etc`` is caught too.
    """
    if not path.startswith("/") or "\x00" in path:
        return None
    real = Path(os.path.realpath(path))
    for allowed in allowed_dirs:
        root = Path(os.path.realpath(allowed))
        if real == root or root in real.parents:
            return real
    return None


def s3_bucket_key(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key"). Keys are taken literally (no decoding)."""
    parts = urlsplit(url)
    key = url.split("://", 1)[1][len(parts.netloc) :].lstrip("/")
    return parts.netloc, key.split("?", 1)[0].split("#", 1)[0]


def join_url(base: str, relative: str) -> str:
    """``base`` + "/" + ``relative`` (POSIX, no leading slash), percent-encoded where the scheme needs it.

    s3 keys are literal; http(s), ftp and file URLs percent-encode each path segment.
    """
    relative = relative.lstrip("/")
    if not relative:
        return base
    if scheme_of(base) != "s3" and not base.startswith("/"):
        relative = quote(relative, safe="/")
    return base.rstrip("/") + "/" + relative
