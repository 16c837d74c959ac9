"""Make URLs and messages safe to log and to show to clients.

A URL may carry secrets in three places: userinfo (``ftp://user:pass@host``), the query string
(S3/GCS/Azure signed URLs, ``?private_token=``, ``?sig=``) and the fragment.

- ``redact_url`` (log lines, system logs, error messages) drops all three instead of trying to
  recognise which parameters are secret: a log line does not need them.
- ``mask_url`` (task views: the submitter's own URLs shown back) keeps the URL recognisable:
  userinfo becomes ``***@`` and the value of every credential parameter (SECRET_PARAMETERS, or a
  name containing one of SECRET_NAME_PARTS) becomes ``***``; other parameters stay as sent.
  The stored task keeps the original: the engine needs it for the transfer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "***"

# Query/fragment parameters whose value is a credential (compared case-insensitively, after
# percent-decoding the name). AWS SigV4/SigV2, GCS, Azure SAS (sig; se/sp/sv are not secret),
# OAuth-style tokens, GitLab/Pulsar private tokens, API keys.
SECRET_PARAMETERS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "signature",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "sig",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "private_token",
        "key",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "auth",
        "authorization",
        "code",
    }
)
# A parameter whose name contains one of these is a credential too (x-ms-signature, upload_token...).
SECRET_NAME_PARTS = ("token", "secret", "signature", "credential", "password", "apikey", "api_key")
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


def is_secret_parameter(name: str) -> bool:
    lowered = unquote_plus(name).strip().lower()
    return lowered in SECRET_PARAMETERS or any(part in lowered for part in SECRET_NAME_PARTS)


def _mask_parameters(text: str) -> str:
    """``a=1&sig=xyz`` -> ``a=1&sig=***``; the rest kept byte for byte (order, encoding, separators)."""
    pieces = re.split(r"([&;])", text)
    for i in range(0, len(pieces), 2):
        name, eq, _value = pieces[i].partition("=")
        if eq and is_secret_parameter(name):
            pieces[i] = f"{name}={REDACTED}"
        elif not eq and is_secret_parameter(name) and name:
            pieces[i] = name  # a bare flag carries no value
    return "".join(pieces)


def mask_url(url: str) -> str:
    """``url`` as a view shows it: userinfo and credential parameter values replaced by ``***``."""
    if not isinstance(url, str) or url.startswith("/"):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_url(url)
    if not parts.scheme:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
    query = _mask_parameters(parts.query)
    fragment = _mask_parameters(parts.fragment) if "=" in parts.fragment else parts.fragment
    head = f"{parts.scheme}://{netloc}" if url[len(parts.scheme) :].startswith("://") else f"{parts.scheme}:"
    return head + parts.path + (f"?{query}" if "?" in url else "") + (f"#{fragment}" if "#" in url else "")


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
