"""Who is calling: the result of authentication, independent of how it was done."""

from __future__ import annotations

from dataclasses import dataclass

from tesp_api.store.port import Owner


@dataclass(frozen=True, slots=True)
class Principal:
    """``owner`` is recorded on the tasks this caller creates; ``is_admin`` sees every task.

    With authentication off there is nobody to tell apart: the principal has no owner and is an
    administrator, so a local single-user service shows all tasks.
    """

    owner: Owner | None
    is_admin: bool = False

    @property
    def read_scope(self) -> Owner | None:
        """The owner filter for store queries: None (everything) for administrators."""
        return None if self.is_admin else self.owner


ANONYMOUS_ADMIN = Principal(owner=None, is_admin=True)
