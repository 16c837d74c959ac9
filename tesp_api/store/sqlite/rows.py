"""A ``tasks`` row and what it stands for: the column lists the reads select, and the decoding of a
row into a TaskRecord or a TaskSummary.

Why a module of its own: the reads, the claim (fair.py) and the writes all select the same columns
and decode them the same way; a row that does not decode is a CorruptRecord everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from tesp_api.store.lean import basic_body, join_log, join_task
from tesp_api.store.port import CorruptRecord, Owner, TaskRecord, TaskSummary
from tesp_api.store.records import DECODE_ERRORS, decode_problem, from_epoch_ms, log_from_doc
from tesp_api.tes.models import TesState
from tesp_api.tes.views import json_bytes

COLUMNS = (
    "seq, id, state, owner_subject, owner_issuer, created_at_ms, task_json, log_json, active,"
    " lease_owner, lease_expires_ms, backend_json, version, content_json, log_text_json"
)
# What the BASIC view needs: the light task and log texts, never the heavy ones (store/lean.py).
BASIC_COLUMNS = "seq, id, state, owner_subject, owner_issuer, created_at_ms, task_json, log_json"

SUMMARY_COLUMNS = "seq, id, state, owner_subject, owner_issuer"
STATE_LIST = ", ".join(f"'{state.value}'" for state in TesState)  # SQL literals of every TES state


def to_summary(row: tuple[Any, ...]) -> TaskSummary:
    seq, task_id, state, subject, issuer = row
    try:
        task_state = TesState(state)
    except ValueError as exc:
        raise CorruptRecord(str(task_id), f"unknown state {state!r}") from exc
    return TaskSummary(
        task_id, task_state, seq, Owner(subject, issuer or "") if subject is not None else None
    )


def to_record(row: tuple[Any, ...]) -> TaskRecord:
    """The row as a record; CorruptRecord (a StoreError) when it does not decode."""
    try:
        return _decode(row)
    except DECODE_ERRORS as exc:
        raise CorruptRecord(str(row[1]), decode_problem(exc)) from exc


def _decode(row: tuple[Any, ...]) -> TaskRecord:
    (
        seq,
        task_id,
        state,
        subject,
        issuer,
        created_ms,
        task_json,
        log_json,
        active,
        lease_owner,
        lease_ms,
        backend_json,
        version,
        content_json,
        log_text_json,
    ) = row
    return TaskRecord(
        id=task_id,
        state=TesState(state),
        task=join_task(task_json, content_json),
        owner=Owner(subject, issuer or "") if subject is not None else None,
        created_at=from_epoch_ms(created_ms),
        seq=seq,
        log=log_from_doc(join_log(log_json, log_text_json)),
        active=bool(active),
        lease_owner=lease_owner,
        lease_expires=from_epoch_ms(lease_ms) if lease_ms is not None else None,
        backend=json.loads(backend_json),
        version=version,
    )


def basic_owner(row: tuple[Any, ...]) -> Owner | None:
    """The owner of a BASIC_COLUMNS row (for the point read's owner check)."""
    return Owner(row[3], row[4] or "") if row[3] is not None else None


def to_basic(row: tuple[Any, ...]) -> bytes:
    """A BASIC_COLUMNS row as its BASIC view's JSON, from the light texts only; CorruptRecord when
    it does not decode (as to_record for the same row)."""
    _seq, task_id, state, _subject, _issuer, created_ms, task_json, log_json = row
    try:
        TesState(state)
        body = basic_body(task_id, state, from_epoch_ms(created_ms), task_json, log_json)
    except DECODE_ERRORS as exc:
        raise CorruptRecord(str(task_id), decode_problem(exc)) from exc
    return json_bytes(body)
