"""Which input/output URLs a task may name: the seam to the transfer layer.

``tesp_api.transfer.validate`` knows the enabled schemes, the allowed directories for file:// URLs
and the credentials; its answer is final. Only if that module is missing (a trimmed installation)
is the scheme checked here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tesp_api.config.settings import TransferSettings
from tesp_api.tes.models import TesFileType
from tesp_api.tes.validate import UrlCheck

FALLBACK_SCHEMES = frozenset({"file", "http", "https", "ftp", "s3"})


def _scheme_check(url: str, file_type: TesFileType | None = None) -> str | None:
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


def url_checkers(settings: TransferSettings) -> tuple[UrlCheck, UrlCheck]:
    """(check_input_url, check_output_url), each returning None or the reason a URL is refused."""
    try:
        from tesp_api.transfer import validate
    except ImportError:
        return _scheme_check, _scheme_check

    def check_input(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_input_url(url, settings, file_type)

    def check_output(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_output_url(url, settings, file_type)

    return check_input, check_output
