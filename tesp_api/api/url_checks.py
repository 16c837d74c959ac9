"""Which input/output URLs a task may name: the seam to the transfer layer.

``tesp_api.transfer.validate`` (owned by the transfer engineer) knows the configured schemes,
allowed directories and credentials; when it is present its answer is final. Until then only the
scheme is checked here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tesp_api.config.settings import TransferSettings

FALLBACK_SCHEMES = frozenset({"file", "http", "https", "ftp", "s3"})


def _scheme_check(url: str) -> str | None:
    if not url:
        return "must not be empty"
    if url.startswith("/"):
        return None
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        return f"{url!r} is neither a URL nor an absolute path"
    if scheme not in FALLBACK_SCHEMES:
        return f"unsupported URL scheme {scheme!r} (supported: {', '.join(sorted(FALLBACK_SCHEMES))})"
    return None


def _transfer_validate() -> Any | None:
    try:
        return importlib.import_module("tesp_api.transfer.validate")
    except ModuleNotFoundError as exc:
        if exc.name != "tesp_api.transfer.validate":
            raise
        return None


def url_checkers(
    settings: TransferSettings,
) -> tuple[Callable[[str], str | None], Callable[[str], str | None]]:
    """(check_input_url, check_output_url), each returning None or the reason a URL is refused."""
    module = _transfer_validate()
    if module is None:
        return _scheme_check, _scheme_check

    def check_input(url: str) -> str | None:
        return module.check_input_url(url, settings)  # type: ignore[no-any-return]

    def check_output(url: str) -> str | None:
        return module.check_output_url(url, settings)  # type: ignore[no-any-return]

    return check_input, check_output
