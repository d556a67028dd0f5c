"""Activity leases with fencing tokens: the split-brain core (issue 6, item 3).

One lease document per ``(group, slot)`` in the ``leases`` collection, never deleted:

    {_id: "<group>/<slot>", group, slot, holder, token, expires_at, granted_at, renewed_at}

* ``acquire`` grants the slot only if it is free (``holder`` null) or its lease has expired, and
  increments ``token`` **in the same single-document atomic update** that sets the holder, so the
  token of each grant is strictly greater than every earlier one. The first grant of a slot is
  an upsert; two first-time acquirers race on the unique ``_id`` and the loser gets a duplicate
  key error, i.e. "held". Two acquirers can therefore never both win.
* ``renew`` extends the lease only for the current holder presenting the current token before
  expiry; ``release`` frees it for the current holder and token. A stale holder (expired and
  taken over, or fenced out) is refused: its token is no longer the document's.
* Because the document is never deleted, a released or expired slot keeps its token: the next
  grant is ``token + 1``, even after the group is deleted and declared again.

Clock: expiry is judged with this process's UTC clock (injected, so tests can drive it), not the
database's. That is sound while one service replica grants leases (today's deployment); with
several replicas their clocks must agree within a margin well below the TTL, or the decisions
must move to the server's clock (``$$NOW`` in an update pipeline, which SecantusDB supports).
Holders should in any case step down ``ttl`` minus a safety margin after their last renewal,
measured on their own monotonic clock, as the issue asks. Stored times have millisecond
precision (BSON dates), so the clock is truncated to milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from roost_shared.db import Database
from roost_shared.events import utcnow_ms

LEASES = "leases"

INDEXES: dict[str, list[IndexModel]] = {
    LEASES: [IndexModel([("group", ASCENDING), ("slot", ASCENDING)])],
}


@dataclass(frozen=True)
class Lease:
    """A slot's lease as stored: ``holder`` is None when free; ``token`` is the latest grant's."""

    group: str
    slot: str
    holder: str | None
    token: int
    expires_at: datetime | None

    def held_at(self, now: datetime) -> bool:
        """True while a holder's lease is unexpired at ``now``."""
        return self.holder is not None and self.expires_at is not None and now < self.expires_at

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Lease:
        return cls(
            group=doc["group"],
            slot=doc["slot"],
            holder=doc.get("holder"),
            token=int(doc.get("token", 0)),
            expires_at=doc.get("expires_at"),
        )


def lease_id(group: str, slot: str) -> str:
    return f"{group}/{slot}"


def _ttl(ttl_s: float) -> timedelta:
    if not 0 < ttl_s <= 3600:
        raise ValueError(f"ttl_s must be in (0, 3600], not {ttl_s}")
    return timedelta(milliseconds=round(ttl_s * 1000))


class LeaseStore:
    """acquire / renew / release / current over the ``leases`` collection."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow_ms) -> None:
        self.leases = db[LEASES]
        self.clock = clock

    async def acquire(self, group: str, slot: str, holder: str, ttl_s: float) -> Lease | None:
        """Grant the slot to ``holder`` with a new, bigger fencing token if it is free or
        expired; None if someone holds it (including ``holder`` itself: renew instead)."""
        if not holder:
            raise ValueError("holder must be non-empty")
        now = self.clock()
        try:
            doc = await self.leases.find_one_and_update(
                {
                    "_id": lease_id(group, slot),
                    "$or": [{"holder": None}, {"expires_at": {"$lte": now}}],
                },
                {
                    "$set": {
                        "group": group,
                        "slot": slot,
                        "holder": holder,
                        "expires_at": now + _ttl(ttl_s),
                        "granted_at": now,
                        "renewed_at": now,
                    },
                    "$inc": {"token": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            # The document exists and did not match: someone holds an unexpired lease (or a
            # concurrent first-time acquirer inserted it just before us).
            return None
        return Lease.of(doc)

    async def renew(
        self, group: str, slot: str, holder: str, token: int, ttl_s: float
    ) -> Lease | None:
        """Extend the lease to now + ttl; None unless ``holder`` holds it under ``token`` and
        it has not expired (a holder that missed its expiry must acquire again)."""
        now = self.clock()
        doc = await self.leases.find_one_and_update(
            {
                "_id": lease_id(group, slot),
                "holder": holder,
                "token": token,
                "expires_at": {"$gt": now},
            },
            {"$set": {"expires_at": now + _ttl(ttl_s), "renewed_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return Lease.of(doc) if doc else None

    async def release(self, group: str, slot: str, holder: str, token: int) -> bool:
        """Free the slot if ``holder`` still holds it under ``token``; False otherwise. The
        token stays, so the next grant is bigger still."""
        now = self.clock()
        result = await self.leases.update_one(
            {"_id": lease_id(group, slot), "holder": holder, "token": token},
            {"$set": {"holder": None, "expires_at": now, "released_at": now}},
        )
        return result.modified_count == 1

    async def current(self, group: str, slot: str) -> Lease | None:
        """The slot's lease document (None: never granted). Check ``held_at`` for liveness."""
        doc = await self.leases.find_one({"_id": lease_id(group, slot)})
        return Lease.of(doc) if doc else None

    async def of_group(self, group: str) -> list[Lease]:
        """Every slot lease of a group that was ever granted."""
        docs = await self.leases.find({"group": group}).sort("slot", 1).to_list()
        return [Lease.of(d) for d in docs]
