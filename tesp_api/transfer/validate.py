"""Reject unusable input/output URLs when a task is created (400), not when it runs.

Each check returns an error message fit for a client (URLs redacted) or None when the URL is
acceptable. They do not touch the network: existence and permissions are found out at staging.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tesp_api.config.settings import TransferSettings
from tesp_api.tes.models import TesFileType
from tesp_api.transfer.redact import redact_url
from tesp_api.transfer.urls import local_path_of, resolve_inside, s3_bucket_key, scheme_of


def _check_common(url: str, settings: TransferSettings, role: str) -> str | None:
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
    if scheme == "s3":
        bucket, key = s3_bucket_key(url)
        if not bucket:
            return f"{role} url {shown!r} has no bucket"
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
    url: str, transfer_settings: TransferSettings, file_type: TesFileType | None = None
) -> str | None:
    """Error message for an unusable input URL, else None. Pass ``file_type`` to also reject
    HTTP directory inputs (HTTP has no standard directory listing)."""
    error = _check_common(url, transfer_settings, "input")
    if error is None and file_type == TesFileType.DIRECTORY and scheme_of(url) in ("http", "https"):
        return f"input url {redact_url(url)!r}: DIRECTORY inputs over http(s) are not supported (no standard listing)"
    return error


def check_output_url(
    url: str, transfer_settings: TransferSettings, file_type: TesFileType | None = None
) -> str | None:
    """Error message for an unusable output URL, else None."""
    return _check_common(url, transfer_settings, "output")
