"""Reject unusable input/output URLs when a task is created (400), not when it runs.

Each check returns an error message fit for a client (URLs redacted) or None when the URL is
acceptable. They do not touch the network: existence and permissions are found out at staging, and
the host-name lookups of the SSRF guard run afterwards, off the event loop
(``tesp_api.api.url_checks.address_problems``). What needs no lookup is refused here: IP literals
of forbidden addresses in every spelling, ``localhost`` names, control-plane endpoints, and s3 URLs
that try to name their own endpoint (``s3://bucket@127.0.0.1:9000/k``): the S3 endpoint comes only
from the settings.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tesp_api.config.settings import TransferSettings
from tesp_api.tes.models import TesFileType
from tesp_api.transfer.egress import DEFAULT_PORTS, EgressPolicy, allowed_hosts_hint, parse_ip_literal
from tesp_api.transfer.redact import redact_url
from tesp_api.transfer.urls import local_path_of, resolve_inside, s3_bucket_key, scheme_of

# What S3 accepts as a bucket name (botocore's own check, legacy names included); never a host:port.
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def _check_s3_bucket(bucket: str, shown: str, role: str) -> str | None:
    if not _BUCKET.fullmatch(bucket):
        return (
            f"{role} url {shown!r}: {bucket!r} is not a bucket name (the S3 endpoint comes from the "
            "server's settings, never from the URL: use s3://bucket/key)"
        )
    if parse_ip_literal(bucket) is not None:
        return f"{role} url {shown!r}: a bucket name cannot be an IP address"
    return None


def _check_common(
    url: str, settings: TransferSettings, role: str, policy: EgressPolicy | None = None
) -> str | None:
    shown = redact_url(url)
    if not url or url != url.strip() or any(c in url for c in "\r\n\x00"):
        return f"{role} url {shown!r} is malformed"
    scheme = scheme_of(url)
    if not scheme:
        return (
            f"{role} url {shown!r} has no scheme (use file://, http(s)://, ftp://, s3:// or an absolute path)"
        )
    enabled = set(settings.schemes)
    if scheme not in enabled:
        return f"{role} url {shown!r}: scheme {scheme!r} is not supported here (supported: {', '.join(sorted(enabled))})"
    try:
        parts = urlsplit(url) if not url.startswith("/") else None
        if parts is not None:
            _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return f"{role} url {shown!r} is malformed"
    if scheme in ("http", "https", "ftp") and parts is not None and not parts.hostname:
        return f"{role} url {shown!r} has no host"
    if scheme in ("http", "https", "ftp") and parts is not None and parts.hostname:
        reason = (policy or EgressPolicy(settings)).static_reason(
            parts.hostname, parts.port or DEFAULT_PORTS[scheme]
        )
        if reason:
            return f"{role} url {shown!r} is refused: {reason}{allowed_hosts_hint(reason)}"
    if scheme == "s3":
        bucket, key = s3_bucket_key(url)
        if not bucket:
            return f"{role} url {shown!r} has no bucket"
        bad_bucket = _check_s3_bucket(bucket, shown, role)
        if bad_bucket:
            return bad_bucket
        if not key:
            return f"{role} url {shown!r} names a whole bucket; give a key or prefix (s3://bucket/prefix)"
    if scheme == "ftp" and parts is not None and parts.path in ("", "/"):
        return f"{role} url {shown!r} names no file"
    if scheme == "file":
        try:
            path = local_path_of(url)
        except ValueError:
            return f"{role} url {shown!r}: file URLs must not name a host"
        if not settings.allowed_dirs:
            return f"{role} url {shown!r}: local files are not allowed on this server"
        if resolve_inside(path, settings.allowed_dirs) is None:
            return f"{role} url {shown!r} is outside the directories this server may read and write"
    return None


def check_input_url(
    url: str,
    transfer_settings: TransferSettings,
    file_type: TesFileType | None = None,
    policy: EgressPolicy | None = None,
) -> str | None:
    """Error message for an unusable input URL, else None. Pass ``file_type`` to also reject
    HTTP directory inputs (HTTP has no standard directory listing), ``policy`` for the control
    plane (default: the address rules of ``transfer_settings`` alone)."""
    error = _check_common(url, transfer_settings, "input", policy)
    if error is None and file_type == TesFileType.DIRECTORY and scheme_of(url) in ("http", "https"):
        return f"input url {redact_url(url)!r}: DIRECTORY inputs over http(s) are not supported (no standard listing)"
    return error


def check_output_url(
    url: str,
    transfer_settings: TransferSettings,
    file_type: TesFileType | None = None,
    policy: EgressPolicy | None = None,
) -> str | None:
    """Error message for an unusable output URL, else None."""
    return _check_common(url, transfer_settings, "output", policy)
