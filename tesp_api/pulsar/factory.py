"""The backends of the configured Pulsar servers, each behind the one retry policy (retrying.py).

Every process that talks to Pulsar (``tesp-api serve`` with its engine, ``tesp-api worker``) builds
its backends here, so no backend escapes the policy and control-plane exposure is warned about in
one place. ``tesp_api.engine.engine.build_backends`` is this function (re-exported).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tesp_api.config.settings import Settings
from tesp_api.pulsar.control_plane import warn_about_exposure
from tesp_api.pulsar.port import PulsarBackend
from tesp_api.pulsar.retrying import RetryingBackend, RetryPolicy

if TYPE_CHECKING:
    from tesp_api.store.port import TaskStore

log = logging.getLogger(__name__)


def build_backends(settings: Settings, store: TaskStore | None = None) -> dict[str, PulsarBackend]:
    """One backend per configured Pulsar server: AMQP when it has an amqp_url (whatever url says,
    as in tesp-api 0.2: ``PulsarServer.transport``), REST otherwise; each wrapped in a
    ``RetryingBackend`` with ``pulsar.unreachable_deadline``. ``store``: where AMQP backends keep
    the state every replica must see (amqp.py).

    Control-plane exposure (a guest broker, a token-less Pulsar on TCP while executors have a
    network) is warned about here, where every process that talks to Pulsar passes.
    """
    # The adapters are imported below, when a server of their kind is configured: they load their
    # client libraries (aio-pika) only then.
    warn_about_exposure(settings)
    policy = RetryPolicy.from_settings(settings.pulsar)
    backends: dict[str, PulsarBackend] = {}
    p = settings.pulsar
    for server in p.effective_servers():
        token = server.private_token.get_secret_value() if server.private_token else None
        backend: PulsarBackend
        if server.transport == "rest" and server.url:
            from tesp_api.pulsar.rest import RestBackend

            backend = RestBackend(
                server.name,
                server.url,
                private_token=token,
                timeout=p.client_timeout,
                uds=server.uds,
                lost_job_deadline=p.lost_job_deadline,
            )
        elif server.transport == "amqp":
            if server.url:
                log.info("Pulsar server %s: amqp_url is set, so AMQP is used and url is ignored", server.name)
            try:
                from tesp_api.pulsar.amqp import build_amqp_backend
            except ImportError as exc:
                raise RuntimeError(f"Pulsar server {server.name}: the AMQP backend is not available") from exc
            backend = build_amqp_backend(settings, server, store)  # shared state in the store
        else:
            continue
        backends[server.name] = RetryingBackend(backend, policy)
    return backends
