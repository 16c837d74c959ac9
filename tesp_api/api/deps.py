"""Who is calling: the one seam between the HTTP layer and authentication.

Every route takes a :class:`Principal` from :func:`current_principal`; it passes
``owner=None if principal.is_admin else principal.owner`` to the store when reading and stores
``principal.owner`` on create. With authentication off everybody is an anonymous admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tesp_api.store.port import Owner


@dataclass(frozen=True, slots=True)
class Principal:
    owner: Owner | None
    is_admin: bool

    @property
    def read_scope(self) -> Owner | None:
        """The owner filter for store reads: None (every task) for an admin."""
        return None if self.is_admin else self.owner


ANONYMOUS_ADMIN = Principal(owner=None, is_admin=True)


async def current_principal(request: Request) -> Principal:
    """Authentication is off for now: everyone may see every task.

    The app keeps the authenticator given to ``create_app`` in ``request.app.state.authenticator``.
    """
    return ANONYMOUS_ADMIN
