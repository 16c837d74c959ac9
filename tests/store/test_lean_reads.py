"""The MINIMAL view's store reads (LeanReads: get_summary, list_summaries; issue 15).

They answer exactly what get/list answer, filters, owner scoping, order and page tokens included,
from columns (SQLite) or a projection (MongoDB); every test runs on each adapter (conftest.py).
"""

from __future__ import annotations

import dataclasses

from tesp_api.store.port import LeanReads, ListQuery, Owner, TaskStore
from tesp_api.tes.models import TesState
from tests.store.test_contract import ALICE, BOB, create


async def test_every_adapter_has_the_lean_reads(store: TaskStore) -> None:
    assert isinstance(store, LeanReads)


async def test_get_summary_gives_id_state_and_owner_of_the_record(store: TaskStore) -> None:
    record = await create(store, "a", owner=ALICE)
    await store.update(record.id, state=TesState.RUNNING)
    summary = await store.get_summary(record.id)  # type: ignore[attr-defined]
    assert (summary.id, summary.state, summary.seq, summary.owner) == (
        record.id,
        TesState.RUNNING,
        record.seq,
        ALICE,
    )


async def test_get_summary_is_scoped_to_the_owner_like_get(store: TaskStore) -> None:
    record = await create(store, "a", owner=ALICE)
    assert await store.get_summary(record.id, BOB) is None  # type: ignore[attr-defined]
    assert (await store.get_summary(record.id, ALICE)).id == record.id  # type: ignore[attr-defined]
    assert await store.get_summary("no-such-task") is None  # type: ignore[attr-defined]


async def test_list_summaries_pages_like_list_with_interchangeable_tokens(store: TaskStore) -> None:
    for i in range(7):
        await create(store, f"job-{i}", owner=ALICE if i % 2 else BOB, tags={"k": "v"} if i % 3 else None)
    queries = [
        ListQuery(page_size=2),
        ListQuery(page_size=3, owner=ALICE),
        ListQuery(page_size=2, name_prefix="job-"),
        ListQuery(page_size=1, tags=[("k", "v")]),
        ListQuery(page_size=2, state=TesState.QUEUED),
    ]
    for query in queries:
        full_token: str | None = None
        lean_token: str | None = None
        while True:
            full = await store.list(dataclasses.replace(query, page_token=full_token))
            lean = await store.list_summaries(dataclasses.replace(query, page_token=lean_token))  # type: ignore[attr-defined]
            assert [(s.id, s.state) for s in lean.summaries] == [(r.id, r.state) for r in full.records], query
            assert (lean.next_page_token is None) == (full.next_page_token is None)
            if full.next_page_token is None:
                break
            # a token of one is a token of the other: the same cursor
            full_token, lean_token = lean.next_page_token, full.next_page_token


async def test_list_summaries_of_an_owner_holds_only_their_tasks(store: TaskStore) -> None:
    mine = await create(store, "mine", owner=ALICE)
    await create(store, "theirs", owner=Owner("carol", "https://idp.example"))
    page = await store.list_summaries(ListQuery(owner=ALICE))  # type: ignore[attr-defined]
    assert [s.id for s in page.summaries] == [mine.id]
