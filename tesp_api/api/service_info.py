"""GET /service-info: GA4GH service-info 1.0 plus the TES 1.1 additions, all from settings."""

from __future__ import annotations

from typing import Any

import tesp_api
from tesp_api.config.settings import Settings
from tesp_api.tes.models import (
    TesServiceInfo,
    TesServiceOrganization,
    TesServiceType,
)

TES_SERVICE_TYPE = TesServiceType(group="org.ga4gh", artifact="tes", version="1.1.0")


def derived_storage(settings: Settings) -> list[str]:
    """Storage locations implied by the transfer settings (used when none are configured): the
    allowed directories for file:// URLs, and the S3 buckets, FTP and HTTPS hosts that have
    credentials, each only while its scheme is enabled."""
    transfer = settings.transfer
    enabled = set(getattr(transfer, "schemes", ("file", "http", "https", "ftp", "s3")))
    storage: list[str] = []
    if "file" in enabled:
        storage += [f"file://{d}" if d.startswith("/") else d for d in transfer.allowed_dirs]
    if "s3" in enabled:
        storage += [f"s3://{s3.bucket}" for s3 in transfer.s3 if s3.bucket]
    if "ftp" in enabled:
        storage += [f"ftp://{ftp.host}" for ftp in transfer.ftp]
    if "https" in enabled:
        storage += [f"https://{http.host}" for http in transfer.http]
    return list(dict.fromkeys(storage))


def build_service_info(settings: Settings) -> dict[str, Any]:
    conf = settings.service_info
    info = TesServiceInfo(
        id=conf.id,
        name=conf.name,
        type=TES_SERVICE_TYPE,
        description=conf.description,
        organization=TesServiceOrganization(name=conf.organization_name, url=conf.organization_url),
        contactUrl=conf.contact_url,
        documentationUrl=conf.documentation_url,
        createdAt=conf.created_at,
        updatedAt=conf.updated_at,
        environment=conf.environment,
        version=tesp_api.__version__,
        storage=list(conf.storage) or derived_storage(settings),
        tesResources_backend_parameters=list(settings.engine.backend_parameters),
    )
    return info.model_dump(mode="json", exclude_none=True)


def build_legacy_service_info(settings: Settings) -> dict[str, Any]:
    """The pre-1.0 TES service-info (``name``, ``doc``, ``storage`` and nothing else) that py-tes
    0.4.2 parses: it builds its ServiceInfo from the whole object and fails on any other field
    ("unexpected keyword argument 'id'"). Served at ``/v1/tasks/service-info`` and
    ``/ga4gh/tes/v1/tasks/service-info``; every other client uses ``/service-info``."""
    conf = settings.service_info
    return {
        "name": conf.name,
        "doc": conf.description,
        "storage": list(conf.storage) or derived_storage(settings),
    }
