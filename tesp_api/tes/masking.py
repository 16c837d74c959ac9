"""Credentials inside URLs, masked for the task views (BASIC/FULL) and the system logs they show.

The stored task keeps every URL as submitted: the engine needs the original for the transfer.
What a client reads is rendered through ``mask_url``:

- userinfo (``user:pass@``, or a bare token ``TOKEN@``) becomes ``***@``;
- the value of every credential parameter in the query or fragment becomes ``***``: the names in
  SECRET_PARAMETERS (compared case-insensitively after percent-decoding) and any name containing
  one of SECRET_NAME_PARTS. Other parameters (X-Amz-Date, X-Amz-Expires, Azure's se/sp/sv) stay, so
  the URL is still recognisable. docs/security.md keeps this list for operators.

Domain code (no transfer or HTTP imports): tesp_api/transfer/redact.py re-exports it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit

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
        return url.split("?", 1)[0].split("#", 1)[0]  # unparsable: no query or fragment shown
    if not parts.scheme:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
    path = parts.path
    if url[len(parts.scheme) :].startswith("://"):
        head = f"{parts.scheme}://{netloc}"
    else:  # "scheme:rest" without an authority: whatever precedes an "@" may still be a credential
        head = f"{parts.scheme}:"
        if "@" in path:
            path = f"{REDACTED}@" + path.rsplit("@", 1)[1]
    before_fragment = url.split("#", 1)[0]
    query = f"?{_mask_parameters(parts.query)}" if "?" in before_fragment else ""
    fragment = f"#{_mask_parameters(parts.fragment)}" if "#" in url else ""
    return head + path + query + fragment


def mask_text(text: str) -> str:
    """Every URL inside ``text`` (a system log line) passed through ``mask_url``."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
