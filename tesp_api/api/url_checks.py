"""Which input/output URLs a task may name: the seam between the API and the transfer layer.

``tesp_api.transfer.validate`` knows the enabled schemes (``transfer.schemes``), the allowed
directories for file:// URLs and the credentials; it answers without touching the network. The API
only binds it to the settings and passes it to the domain validation.
"""

from __future__ import annotations

from tesp_api.config.settings import TransferSettings
from tesp_api.tes.models import TesFileType
from tesp_api.tes.validate import UrlCheck
from tesp_api.transfer import validate


def url_checkers(settings: TransferSettings) -> tuple[UrlCheck, UrlCheck]:
    """(check_input_url, check_output_url), each returning None or the reason a URL is refused."""

    def check_input(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_input_url(url, settings, file_type)

    def check_output(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_output_url(url, settings, file_type)

    return check_input, check_output
