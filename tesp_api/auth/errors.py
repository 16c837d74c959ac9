"""Authentication failures, as plain exceptions the HTTP layer maps to responses.

The core stays free of FastAPI; each error carries the status code and the ``WWW-Authenticate``
challenges the API should send. Messages are safe to show to the caller: they never contain the
credentials, the token or which part of a username/password pair was wrong.
"""

from __future__ import annotations


class AuthError(Exception):
    status_code: int = 401
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, message: str, challenges: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.challenges = challenges

    @property
    def www_authenticate(self) -> str | None:
        """One header value holding every challenge (RFC 9110 allows a comma-separated list)."""
        return ", ".join(self.challenges) or None


class Unauthenticated(AuthError):
    """Missing, malformed or rejected credentials: 401 with challenges."""

    status_code = 401


class AuthUnavailable(AuthError):
    """The credentials could not be checked because an identity provider is unreachable: 503."""

    status_code = 503
    retry_after = 5


class LoginThrottled(AuthError):
    """Too many failed logins for this user or from this address: 429 with Retry-After, no check run."""

    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after} s")
        self.retry_after = retry_after
