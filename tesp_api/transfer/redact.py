"""Make URLs and messages safe to log and to show to clients.

A URL may carry secrets in three places: userinfo (``ftp://user:pass@host``), the query string
(S3/GCS/Azure signed URLs, ``?private_token=``, ``?sig=``) and the fragment.

- ``redact_url`` (log lines, system logs, error messages) drops all three instead of trying to
  recognise which parameters are secret: a log line does not need them.
- ``mask_url`` (task views; it lives in tesp_api/tes/masking.py because the views are domain code)
  keeps the URL recognisable: userinfo becomes ``***@`` and credential parameter values ``***``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from tesp_api.tes.masking import REDACTED, SECRET_NAME_PARTS, SECRET_PARAMETERS, is_secret_parameter, mask_url

__all__ = [
    "REDACTED",
    "SECRET_NAME_PARTS",
    "SECRET_PARAMETERS",
    "UrlRedactingFilter",
    "install_log_masking",
    "is_secret_parameter",
    "mask_url",
    "redact_text",
    "redact_url",
    "scrub",
]

_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


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


def redact_text(text: str) -> str:
    """Every URL inside ``text`` passed through ``redact_url`` (for third-party log messages)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class UrlRedactingFilter(logging.Filter):
    """Rewrites a record's message with its URLs redacted (httpx logs whole signed URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_masking(logger_name: str) -> None:
    """Put a UrlRedactingFilter on ``logger_name`` once (idempotent)."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(f, UrlRedactingFilter) for f in target.filters):
        target.addFilter(UrlRedactingFilter())
