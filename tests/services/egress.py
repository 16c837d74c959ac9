"""What a test's transfer settings need so its 127.0.0.1 data servers are reachable.

The SSRF guard (tesp_api/transfer/egress.py) refuses loopback addresses for input and output
URLs; every test server listens on 127.0.0.1. ``transfer.allowed_hosts`` re-allows it, and the
control plane (Pulsar, the broker, staging, the API itself) stays refused even then, so tests keep
the production rule that matters. Use it as ``TransferSettings(**LOOPBACK_TRANSFER, ...)`` or
``{"transfer": {**LOOPBACK_TRANSFER, ...}}``.
"""

from __future__ import annotations

LOOPBACK_HOSTS: list[str] = ["127.0.0.1", "localhost"]
LOOPBACK_TRANSFER: dict[str, list[str]] = {"allowed_hosts": LOOPBACK_HOSTS}
