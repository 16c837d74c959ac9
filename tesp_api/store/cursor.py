"""Opaque keyset page tokens, shared by every store adapter.

A token carries the creation sequence number of the last task on the previous page and a MAC
over that number *and* the list filters it was issued for. So a client can neither forge a
position nor reuse a token with other filters: both give ``InvalidPageToken`` (a 400 for the API)
instead of a silently wrong page. The MAC key is a random secret kept in the database itself, so
every process serving the same database accepts the tokens of the others, across restarts.

Layout (before URL-safe base64 without padding): 8 bytes big-endian seq + 12 bytes truncated
HMAC-SHA256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from tesp_api.store.port import InvalidPageToken, ListQuery, Page, SummaryPage, TaskRecord, TaskSummary

_SEQ_BYTES = 8
_MAC_BYTES = 12
_TOKEN_BYTES = _SEQ_BYTES + _MAC_BYTES
_MAX_TOKEN_CHARS = 64


def _fingerprint(query: ListQuery) -> bytes:
    """The filters that define *which* list a token belongs to (page size may change freely)."""
    tags = sorted((key, value or "") for key, value in query.tags)
    owner = [query.owner.subject, query.owner.issuer] if query.owner is not None else None
    state = query.state.value if query.state is not None else None
    return json.dumps([query.name_prefix, state, tags, owner], separators=(",", ":")).encode()


def _mac(key: bytes, seq: int, query: ListQuery) -> bytes:
    message = seq.to_bytes(_SEQ_BYTES, "big") + b"|" + _fingerprint(query)
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_page_token(key: bytes, seq: int, query: ListQuery) -> str:
    raw = seq.to_bytes(_SEQ_BYTES, "big") + _mac(key, seq, query)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(key: bytes, token: str, query: ListQuery) -> int:
    """The sequence number to continue below; InvalidPageToken when the token is not ours."""
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        raise InvalidPageToken("invalid page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidPageToken("invalid page_token") from exc
    if len(raw) != _TOKEN_BYTES:
        raise InvalidPageToken("invalid page_token")
    seq = int.from_bytes(raw[:_SEQ_BYTES], "big")
    if not hmac.compare_digest(raw[_SEQ_BYTES:], _mac(key, seq, query)):
        raise InvalidPageToken("invalid page_token (tampered, or issued for other filters)")
    return seq


def stored_bytes(*texts: str | None) -> int:
    """UTF-8 size of a record's stored JSON texts (what ``ListQuery.max_bytes`` counts)."""
    return sum(len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts if t)


class PageBudget:
    """``ListQuery.max_bytes`` while reading rows one by one: ``admits(size)`` is False for the first row
    that would go over it (never for the first row), and ``cut`` says the page stopped early."""

    def __init__(self, max_bytes: int | None) -> None:
        self._left = max_bytes
        self._taken = 0
        self.cut = False

    def admits(self, size: int) -> bool:
        if self._left is not None:
            if self._taken and size > self._left:
                self.cut = True
                return False
            self._left -= size
        self._taken += 1
        return True


def page_from(
    records: list[TaskRecord], page_size: int, key: bytes, query: ListQuery, *, cut: bool = False
) -> Page:
    """The page for ``records`` fetched with LIMIT page_size + 1: the extra one only says a next page exists.
    ``cut``: reading stopped early at ``query.max_bytes`` (there are more), so the page ends here."""
    if cut and records:
        return Page(records=records, next_page_token=encode_page_token(key, records[-1].seq, query))
    if len(records) <= page_size:
        return Page(records=records, next_page_token=None)
    records = records[:page_size]
    return Page(records=records, next_page_token=encode_page_token(key, records[-1].seq, query))


def summary_page_from(
    summaries: list[TaskSummary], page_size: int, key: bytes, query: ListQuery
) -> SummaryPage:
    """As :func:`page_from`, for MINIMAL summaries (no byte budget: a summary is a few dozen bytes)."""
    if len(summaries) <= page_size:
        return SummaryPage(summaries=summaries, next_page_token=None)
    summaries = summaries[:page_size]
    return SummaryPage(summaries=summaries, next_page_token=encode_page_token(key, summaries[-1].seq, query))


def view_page_json(
    views: list[bytes], seqs: list[int], page_size: int, key: bytes, query: ListQuery, *, cut: bool = False
) -> bytes:
    """The ListTasks answer ``{"tasks":[...],"next_page_token":..}`` for tasks already rendered as
    JSON (the lean BASIC reads, store/lean.py), fetched with LIMIT page_size + 1 like page_from:
    the same token rules, so its tokens and page_from's are interchangeable."""
    if not (cut and views) and len(views) > page_size:
        del views[page_size:]
        cut = True
    body = b'{"tasks":[' + b",".join(views) + b"]"
    if cut and views:
        token = encode_page_token(key, seqs[len(views) - 1], query)
        body += b',"next_page_token":"' + token.encode("ascii") + b'"'
    return body + b"}"
