"""Fair claiming on MongoDB (docs/quotas.md): the per-owner and per-server slot documents.

MongoDB (and the emulator) gives atomicity per document, not across the task and a counter. So the
limit is decided on ONE document with a conditional update, and every other write is ordered so a
crash between two of them can only make a limit tighter for a while, never let it be passed:

* ``<collection>_fair`` holds one document per owner, ``{_id: "o" + owner key, subject, issuer,
  queued, served, holders: [task ids]}``, and one per server, ``{_id: "s" + name, holders}``.
  ``holders`` are the ids of the tasks holding a slot. Taking a slot is
  ``update_one({_id, $or: [{holders: id}, {"holders.<limit-1>": {$exists: false}}]}, {$addToSet:
  {holders: id}})``: it succeeds only while fewer than ``limit`` tasks hold one, at once for every
  replica, and taking it again for the same task is a no-op (idempotent after a crash).
* Task documents carry ``slot``: 1 waiting (QUEUED, no slot), 2 holding one (``slot_server``),
  3 active without a slot (final, cleanup to do), 0 inactive.
* A claim (1) leases one waiting task (``find_one_and_update`` on ``slot: 1`` and a free lease: no
  other worker can take it now), (2) takes the owner's slot, (3) the server's, (4) marks the task
  ``slot: 2``. A failed step undoes the earlier ones. A crash after (2) or (3) leaves a holder whose
  task is still waiting with a lease that expires: the next claim of that task takes the slot again
  (no-op), and a holder whose task does not hold a slot (gone, final, waiting with an expired lease)
  is pulled out by ``repair`` when its document looks full. So a crash costs a slot for at most one
  repair, and no interleaving of replicas gives a slot to more tasks than the limit.
* ``queued`` (waiting tasks per owner) is only for finding the owners with work, and ``served`` (a
  counter at the last claim) orders them: the round robin. ``queued`` is repaired when an owner
  turns out to have no waiting task, and an owner whose count was lost is found again by the
  fallback look at the oldest waiting task.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from tesp_api.store.port import ClaimPolicy, Owner, QuotaUsage
from tesp_api.tes import states
from tesp_api.tes.models import TesState

WAITING, HOLDING, UNDER_WAY_NO_SLOT, NONE = 1, 2, 3, 0
_REPAIR_EVERY = 30.0  # seconds between repairs of one full holders document (per process)
_SERVED = "#served"  # neither an owner ("o...") nor a server ("s...") document


def owner_doc_id(subject: str | None, issuer: str | None) -> str:
    import json

    return "o" + json.dumps([subject, issuer], separators=(",", ":"), ensure_ascii=False)


def server_doc_id(name: str) -> str:
    return "s" + name


def slot_after(slot: int, state: TesState, active: bool) -> int:
    """A task's slot after a change (see the module docstring)."""
    if not active:
        return NONE
    if states.is_final(state):
        return UNDER_WAY_NO_SLOT
    if state == TesState.QUEUED:
        return slot if slot in (WAITING, HOLDING) else WAITING
    return HOLDING


def _full_filter(doc_id: str, task_id: str, limit: int) -> dict[str, Any]:
    if not limit:
        return {"_id": doc_id}
    return {"_id": doc_id, "$or": [{"holders": task_id}, {f"holders.{limit - 1}": {"$exists": False}}]}


class FairSlots:
    """The slot documents of one store (``fair``: the ``<collection>_fair`` collection)."""

    def __init__(self, tasks: Any, fair: Any, repaired: dict[str, float]) -> None:
        self.tasks = tasks
        self.fair = fair
        self._repaired = repaired  # the store's: when each document was last repaired

    async def create_indexes(self) -> None:
        """The waiting tasks per owner in order; the tasks under way by lease; the owners with work
        by when they were last served. Partial, so the claim never walks the waiting queue."""
        await self.tasks.create_index(
            [("owner_subject", ASCENDING), ("owner_issuer", ASCENDING), ("seq", ASCENDING)],
            name="fair_waiting",
            partialFilterExpression={"slot": WAITING},
        )
        await self.tasks.create_index(
            [("lease_expires", ASCENDING), ("seq", ASCENDING)],
            name="fair_under_way",
            partialFilterExpression={"slot": {"$gte": HOLDING}},
        )
        await self.fair.create_index(
            [("served", ASCENDING), ("_id", ASCENDING)],
            name="owners_round_robin",
            partialFilterExpression={"queued": {"$gt": 0}},
        )

    async def backfill(self) -> None:
        """Documents written before fair claiming get their slot (and their owner's count)."""
        async for doc in self.tasks.find({"seq": {"$gte": 0}, "slot": {"$exists": False}}):
            try:
                state = TesState(doc.get("state"))
            except ValueError:
                continue
            active = bool(doc.get("active"))
            slot = slot_after(0 if doc.get("lease_owner") else WAITING, state, active)
            if state == TesState.QUEUED and active and doc.get("lease_owner"):
                slot = HOLDING  # claimed before the upgrade, not moved yet
            server = None
            if slot == HOLDING:
                import json

                server = json.loads(doc.get("backend_json") or "{}").get("server")
            result = await self.tasks.update_one(
                {"_id": doc["_id"], "slot": {"$exists": False}},
                {"$set": {"slot": slot, "slot_server": server}},
            )
            if result.modified_count:
                await self.after_change({**doc, "slot_server": None}, NONE, slot, server)

    # ---- counters kept by create/update ----------------------------------------------------------
    async def queued(self, subject: str | None, issuer: str | None, delta: int) -> None:
        await self.fair.update_one(
            {"_id": owner_doc_id(subject, issuer)},
            {
                "$inc": {"queued": delta},
                "$setOnInsert": {"subject": subject, "issuer": issuer, "served": 0, "holders": []},
            },
            upsert=True,
        )

    async def after_change(self, doc: dict[str, Any], old: int, new: int, new_server: str | None) -> None:
        """Bring the slot documents in line with a task whose slot went ``old`` -> ``new`` (the task
        document is already written: a crash before this only leaves what ``repair`` fixes)."""
        subject, issuer, task_id = doc.get("owner_subject"), doc.get("owner_issuer"), doc["_id"]
        old_server = doc.get("slot_server")
        if old == WAITING and new != WAITING:
            await self.queued(subject, issuer, -1)
        if new == WAITING and old != WAITING:
            await self.queued(subject, issuer, +1)
        if old == HOLDING and new != HOLDING:
            await self.fair.update_one(
                {"_id": owner_doc_id(subject, issuer)}, {"$pull": {"holders": task_id}}
            )
        if new == HOLDING and old != HOLDING:  # a task put under way without a claim: counted, never refused
            await self.fair.update_one(
                {"_id": owner_doc_id(subject, issuer)},
                {"$addToSet": {"holders": task_id}, "$setOnInsert": {"subject": subject, "issuer": issuer}},
                upsert=True,
            )
        if old == HOLDING and old_server and (new != HOLDING or new_server != old_server):
            await self.fair.update_one(
                {"_id": server_doc_id(str(old_server))}, {"$pull": {"holders": task_id}}
            )
        if new == HOLDING and new_server and (old != HOLDING or new_server != old_server):
            await self.fair.update_one(
                {"_id": server_doc_id(new_server)}, {"$addToSet": {"holders": task_id}}, upsert=True
            )

    # ---- the claim -------------------------------------------------------------------------------
    async def loads(self) -> dict[str, int]:
        out: dict[str, int] = {}
        async for doc in self.fair.find({"_id": {"$regex": "^s"}}):
            out[str(doc["_id"])[1:]] = len(doc.get("holders") or [])
        return out

    async def owners(self, after: tuple[int, str]) -> list[dict[str, Any]]:
        served, last = after
        cursor = (
            self.fair.find(
                {
                    "queued": {"$gt": 0},
                    "$or": [{"served": {"$gt": served}}, {"served": served, "_id": {"$gt": last}}],
                }
            )
            .sort([("served", ASCENDING), ("_id", ASCENDING)])
            .limit(64)
        )
        return [doc async for doc in cursor]

    async def take(self, doc_id: str, task_id: str, limit: int) -> bool:
        """Take a slot of ``doc_id`` for ``task_id`` if fewer than ``limit`` are held (0: no limit)."""
        result = await self.fair.update_one(
            _full_filter(doc_id, task_id, limit), {"$addToSet": {"holders": task_id}}
        )
        if result.matched_count:
            return True
        if limit and await self.repair(doc_id):
            result = await self.fair.update_one(
                _full_filter(doc_id, task_id, limit), {"$addToSet": {"holders": task_id}}
            )
            return bool(result.matched_count)
        if not limit:  # the document did not exist yet
            await self.fair.update_one({"_id": doc_id}, {"$addToSet": {"holders": task_id}}, upsert=True)
            return True
        exists = await self.fair.find_one({"_id": doc_id}, {"_id": 1})
        if exists is None:
            await self.fair.update_one({"_id": doc_id}, {"$setOnInsert": {"holders": []}}, upsert=True)
            result = await self.fair.update_one(
                _full_filter(doc_id, task_id, limit), {"$addToSet": {"holders": task_id}}
            )
            return bool(result.matched_count)
        return False

    async def give_back(self, doc_id: str, task_id: str) -> None:
        await self.fair.update_one({"_id": doc_id}, {"$pull": {"holders": task_id}})

    async def repair(self, doc_id: str, *, now: datetime | None = None) -> bool:
        """Pull the holders whose task holds no slot (see the module docstring); at most every
        _REPAIR_EVERY seconds per document. True when something was pulled."""
        last = self._repaired.get(doc_id, 0.0)
        if time.monotonic() - last < _REPAIR_EVERY:
            return False
        self._repaired[doc_id] = time.monotonic()
        doc = await self.fair.find_one({"_id": doc_id})
        holders = list((doc or {}).get("holders") or [])
        if not holders:
            return False
        valid: set[str] = set()
        moment = now or datetime.now().astimezone()
        async for task in self.tasks.find(
            {"_id": {"$in": holders}}, {"slot": 1, "lease_expires": 1, "lease_owner": 1}
        ):
            slot = task.get("slot")
            expires = task.get("lease_expires")
            if slot == HOLDING or (
                slot == WAITING and task.get("lease_owner") and expires is not None and expires > moment
            ):
                valid.add(task["_id"])
        stale = [h for h in holders if h not in valid]
        if stale:
            await self.fair.update_one({"_id": doc_id}, {"$pull": {"holders": {"$in": stale}}})
        return bool(stale)

    async def next_served(self) -> int:
        doc = await self.fair.find_one_and_update(
            {"_id": _SERVED}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    async def served(self, doc_id: str, value: int) -> None:
        await self.fair.update_one({"_id": doc_id}, {"$set": {"served": value}})

    async def no_waiting(self, owner: dict[str, Any]) -> None:
        """The owner's count says it waits but no task does: set it to 0 unless it changed meanwhile."""
        await self.fair.update_one(
            {"_id": owner["_id"], "queued": owner.get("queued")}, {"$set": {"queued": 0}}
        )

    async def usage(self, owner: Owner | None) -> QuotaUsage:
        subject, issuer = (owner.subject, owner.issuer) if owner is not None else (None, None)
        doc = await self.fair.find_one({"_id": owner_doc_id(subject, issuer)})
        return QuotaUsage(
            owner_active=len((doc or {}).get("holders") or []),
            owner_queued=max(0, int((doc or {}).get("queued") or 0)),
            servers=await self.loads(),
        )


def owner_limit(rules: ClaimPolicy, subject: str | None) -> int:
    return rules.owner_limit(subject)


def server_limit(limits: Mapping[str, int], name: str) -> int:
    return int(limits.get(name, 0))
