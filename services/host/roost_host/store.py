"""The host service's collections, their indexes and its queries (database ``roost_host``).

* ``hosts``: one per host config told us about, keyed by config's ``uuid``: identity (hostname,
  personality, management MAC/IP, BMC type and address — never a password), the three states,
  ``task``, and ``pending`` (the timed step under way: ``{"step", "due"}``) with ``version``
  bumped by every write; ``kube``: the last Kubernetes request for its node (``{id, op, node,
  status, reason, message, requested_at, finished_at}``, ``status`` ``pending`` until done).
* ``timeline``: one entry per transition of a host (by ``host_uuid``, so renames keep it).
* ``guards``: ``{"_id": "controllers"}`` is written by every transition of a controller, so two
  concurrent locks of the last two controllers conflict and one is retried (no write skew).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument

from roost_shared.db import Database, Session
from roost_shared.paging import SortSpec, page
from roost_shared.problems import NotFound
from roost_shared.refs import host_query

HOSTS = "hosts"
TIMELINE = "timeline"
GUARDS = "guards"

HOST_SORT: SortSpec = [("created_at", 1), ("uuid", 1)]
#: Timeline order: oldest first. By time, then id: ObjectIds made by two processes (a service and
#: its restarted successor) within the same second do not sort in the order they were made.
TIMELINE_SORT: SortSpec = [("time", 1), ("_id", 1)]

INDEXES: dict[str, list[IndexModel]] = {
    HOSTS: [
        IndexModel([("uuid", ASCENDING)], unique=True),
        IndexModel([("hostname", ASCENDING)]),
        IndexModel([("mgmt_mac", ASCENDING)]),
        IndexModel([("personality", ASCENDING)]),
        IndexModel([("pending.due", ASCENDING)], sparse=True),
        IndexModel([("kube.status", ASCENDING)], sparse=True),
        IndexModel([(f, ASCENDING) for f, _ in HOST_SORT]),
    ],
    TIMELINE: [
        IndexModel([("uuid", ASCENDING)], unique=True),
        IndexModel([("host_uuid", ASCENDING), ("time", ASCENDING), ("_id", ASCENDING)]),
    ],
}


class HostStore:
    """Queries over the host collections; writes take the caller's session."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.hosts = db[HOSTS]
        self.timeline = db[TIMELINE]
        self.guards = db[GUARDS]

    async def host(self, ref: str, session: Session | None = None) -> dict[str, Any]:
        """A host by uuid, management MAC or assigned hostname (404 otherwise)."""
        query = host_query(ref)
        doc = await self.hosts.find_one(query, session=session) if query else None
        if doc is None:
            raise NotFound(kind="Host", id=ref)
        return doc

    async def by_uuid(self, host_uuid: str, session: Session | None = None) -> dict | None:
        return await self.hosts.find_one({"uuid": host_uuid}, session=session)

    async def insert(self, session: Session, doc: dict[str, Any]) -> None:
        await self.hosts.insert_one(doc, session=session)

    async def update(
        self, session: Session, host_uuid: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        doc = await self.hosts.find_one_and_update(
            {"uuid": host_uuid},
            {"$set": changes, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise NotFound(kind="Host", id=host_uuid)
        return doc

    async def delete(self, session: Session, host_uuid: str) -> None:
        await self.hosts.delete_one({"uuid": host_uuid}, session=session)
        await self.timeline.delete_many({"host_uuid": host_uuid}, session=session)

    async def other_controllers(self, session: Session, host_uuid: str) -> list[dict[str, Any]]:
        query = {"personality": "controller", "uuid": {"$ne": host_uuid}}
        return await self.hosts.find(query, session=session).to_list()

    async def touch_controller_guard(self, session: Session) -> None:
        await self.guards.update_one(
            {"_id": "controllers"}, {"$inc": {"n": 1}}, upsert=True, session=session
        )

    async def due(self, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
        """Hosts whose timed step is due."""
        query = {"pending.due": {"$lte": now}}
        return await self.hosts.find(query).sort("pending.due", 1).limit(limit).to_list()

    async def next_due(self) -> datetime | None:
        doc = await self.hosts.find_one(
            {"pending.due": {"$type": "date"}}, sort=[("pending.due", 1)]
        )
        return doc["pending"]["due"] if doc else None

    async def pending(self) -> list[dict[str, Any]]:
        return await self.hosts.find({"pending.due": {"$type": "date"}}).to_list()

    async def kube_pending(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Hosts whose node has a drain or uncordon requested and not yet done."""
        return await self.hosts.find({"kube.status": "pending"}).limit(limit).to_list()

    async def list_hosts(
        self, query: dict[str, Any], *, marker: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await page(self.hosts, query, HOST_SORT, marker=marker, limit=limit, what="host")

    # Timeline -------------------------------------------------------------------------------

    async def add_entry(self, session: Session, entry: dict[str, Any]) -> None:
        await self.timeline.insert_one({"_id": ObjectId(), **entry}, session=session)

    async def entries(
        self, host_uuid: str, *, marker: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await page(
            self.timeline,
            {"host_uuid": host_uuid},
            TIMELINE_SORT,
            marker=marker,
            limit=limit,
            what="timeline entry",
        )
