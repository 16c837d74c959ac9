"""Make URLs and messages safe to log and to show to clients.

A URL may carry secrets in three places: userinfo (``ftp://user:pass@host``), the query string
(S3/GCS/Azure signed URLs, ``?private_token=``, ``?sig=``) and the fragment. We drop all three
instead of trying to recognise which parameters are secret: a log line does not need them.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` without userinfo, query and fragment (replaced by a marker so readers know).

    Plain paths and strings that do not parse come back unchanged (a path holds no credential),
    except that anything after a ``?`` is still dropped.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    if not parts.scheme:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
    query = REDACTED if parts.query else ""
    fragment = REDACTED if parts.fragment else ""
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    if not netloc and url[len(parts.scheme) :].startswith("://"):
        redacted = redacted.replace(":", "://", 1) if "://" not in redacted else redacted
    return redacted


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every known secret string replaced, for third-party messages we must quote."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    return text
