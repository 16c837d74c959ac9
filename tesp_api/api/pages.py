"""A ListTasks answer of bounded size (``api.max_page_bytes``).

Why: a FULL page of big tasks (10 MB of input content each) was built whole in memory several times
over (records, dicts, JSON) and sent as one 150 MB answer; any user could make the server allocate
a gigabyte. Now the store stops reading once the tasks' stored JSON reaches a byte budget
(``ListQuery.max_bytes``) and gives a next_page_token there, so a page simply has fewer tasks than
``page_size``. Every TES client follows next_page_token, so none breaks; a task bigger than the
budget still comes alone on its page (each task is bounded by the per-task limits, tes/limits.py).

The budget is the cap minus a margin per task: a rendered task is never bigger than its stored JSON
(task and log) plus its id, state, creation_time and the list punctuation, which the margin covers.
Each task is serialized as soon as it is rendered and its record dropped, so the answer's bytes are
held about once.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tesp_api.store.port import Page, SummaryPage
from tesp_api.tes.models import TesView
from tesp_api.tes.views import json_bytes, render_task

# Bytes a rendered task may have beyond its stored JSON: "id", "state", "creation_time", list commas.
PER_TASK_MARGIN = 1024
_ENVELOPE = 256  # {"tasks":[...],"next_page_token":"..."}


class PageResponse(Response):
    media_type = "application/json"


def page_read_budget(max_page_bytes: int, page_size: int) -> int:
    """The stored-bytes budget for the store, so that the rendered page stays under ``max_page_bytes``."""
    return max(max_page_bytes - _ENVELOPE - PER_TASK_MARGIN * page_size, max_page_bytes // 2)


def page_response(page: Page, view: TesView) -> PageResponse:
    """``{"tasks": [...], "next_page_token": ...}``; empties ``page.records`` as it goes."""
    records = page.records
    records.reverse()
    parts: list[bytes] = []
    while records:
        parts.append(json_bytes(render_task(records.pop(), view)))
    body = b'{"tasks":[' + b",".join(parts) + b"]"
    parts.clear()
    if page.next_page_token:
        body += b',"next_page_token":' + json_bytes(page.next_page_token)
    return PageResponse(body + b"}")


def summary_page_response(page: SummaryPage) -> PageResponse:
    """The MINIMAL page from summaries (LeanReads): no task JSON decoded, one json.dumps."""
    body: dict[str, Any] = {"tasks": [{"id": t.id, "state": t.state.value} for t in page.summaries]}
    if page.next_page_token:
        body["next_page_token"] = page.next_page_token
    return PageResponse(json_bytes(body))
