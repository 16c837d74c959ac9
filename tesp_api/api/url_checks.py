"""Which input/output URLs a task may name: the seam between the API and the transfer layer.

``tesp_api.transfer.validate`` knows the enabled schemes (``transfer.schemes``), the allowed
directories for file:// URLs and the credentials; it answers without touching the network. The API
binds it to the settings and passes it to the domain validation. The SSRF guard's host-name lookups
(``address_problems``) run after that, concurrently and off the event loop, because validation is
synchronous and a lookup may take a while.
"""

from __future__ import annotations

import asyncio

from tesp_api.config.settings import Settings, TransferSettings
from tesp_api.tes.models import TesFileType, TesTask
from tesp_api.tes.validate import UrlCheck
from tesp_api.transfer import validate
from tesp_api.transfer.egress import EgressPolicy, allowed_hosts_hint
from tesp_api.transfer.redact import redact_url
from tesp_api.transfer.urls import scheme_of

_LOOKED_UP = ("http", "https", "ftp")  # s3 endpoints come from settings, file:// from allowed_dirs
_PARALLEL_LOOKUPS = 16


def egress_policy(settings: Settings | TransferSettings) -> EgressPolicy:
    """The SSRF policy: with the control plane when given the whole configuration."""
    if isinstance(settings, Settings):
        return EgressPolicy.from_settings(settings)
    return EgressPolicy(settings)


def url_checkers(
    settings: Settings | TransferSettings, policy: EgressPolicy | None = None
) -> tuple[UrlCheck, UrlCheck]:
    """(check_input_url, check_output_url), each returning None or the reason a URL is refused."""
    transfer = settings.transfer if isinstance(settings, Settings) else settings
    chosen = policy or egress_policy(settings)

    def check_input(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_input_url(url, transfer, file_type, chosen)

    def check_output(url: str, file_type: TesFileType | None) -> str | None:
        return validate.check_output_url(url, transfer, file_type, chosen)

    return check_input, check_output


async def address_problems(task: TesTask, policy: EgressPolicy) -> str | None:
    """The first URL of ``task`` whose host resolves to a refused address, as a 400 message; else None.

    Every http(s)/ftp host is looked up once (all at once, each with ``transfer.resolve_timeout``).
    A name that does not resolve is accepted here and checked again when the transfer connects.
    """
    named: list[tuple[str, str, tuple[str, int]]] = []
    for i, inp in enumerate(task.inputs or []):
        if inp.url and scheme_of(inp.url) in _LOOKED_UP and (target := policy.host_port_of(inp.url)):
            named.append((f"inputs[{i}].url", inp.url, target))
    for i, out in enumerate(task.outputs or []):
        if out.url and scheme_of(out.url) in _LOOKED_UP and (target := policy.host_port_of(out.url)):
            named.append((f"outputs[{i}].url", out.url, target))
    if not named:
        return None
    targets = list(dict.fromkeys(target for _, _, target in named))
    limit = asyncio.Semaphore(_PARALLEL_LOOKUPS)

    async def one(host: str, port: int) -> str | None:
        async with limit:
            return await policy.host_reason(host, port)

    reasons = dict(zip(targets, await asyncio.gather(*(one(h, p) for h, p in targets)), strict=True))
    for where, url, target in named:
        if reasons[target]:
            reason = reasons[target] or ""
            return f"{where}: {redact_url(url)!r} is refused: {reason}{allowed_hosts_hint(reason)}"
    return None
