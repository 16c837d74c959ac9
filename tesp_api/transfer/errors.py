"""The one exception every transfer failure becomes.

Callers (the engine) put ``str(error)`` into a task's ``system_logs``, which clients read: so the
message is built here from a *redacted* URL and a short reason we chose, never from a library's
exception text (httpx and botocore messages can quote whole signed URLs).
"""

from __future__ import annotations

from tesp_api.transfer.redact import redact_url


class TransferError(Exception):
    """A download or upload failed. ``str()`` names the (redacted) URL and why; it holds no secret.

    ``retryable`` marks failures that may go away by themselves (connection refused, timeouts,
    HTTP 5xx/429): the mux retries those with backoff and gives up at once on the others.
    """

    def __init__(
        self, url: str, reason: str, *, retryable: bool = False, direction: str = "transfer"
    ) -> None:
        self.url = redact_url(url)
        self.reason = reason
        self.retryable = retryable
        self.direction = direction
        super().__init__(f"{direction} of {self.url} failed: {reason}")
