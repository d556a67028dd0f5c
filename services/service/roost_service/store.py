"""The service service's group collection, indexes and queries (database ``roost_service``).

* ``service_groups``: one document per declared group, keyed by ``name`` (also a ``uuid`` for
  paging markers and events): the spec as given, ``state``, ``slots``, ``start_order`` and a
  ``version`` bumped by every change.
* ``leases``: see :mod:`roost_service.lease`.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel

from roost_shared.db import Database, Session
from roost_shared.paging import SortSpec, page
from roost_shared.problems import NotFound

GROUPS = "service_groups"
GROUP_SORT: SortSpec = [("name", 1), ("uuid", 1)]

INDEXES: dict[str, list[IndexModel]] = {
    GROUPS: [
        IndexModel([("name", ASCENDING)], unique=True),
        IndexModel([("uuid", ASCENDING)], unique=True),
        IndexModel([(f, ASCENDING) for f, _ in GROUP_SORT]),
    ],
}


class GroupStore:
    """Queries over ``service_groups``; writes take the caller's session."""

    def __init__(self, db: Database) -> None:
        self.groups = db[GROUPS]

    async def find(self, name: str, session: Session | None = None) -> dict[str, Any] | None:
        return await self.groups.find_one({"name": name}, session=session)

    async def get(self, name: str) -> dict[str, Any]:
        doc = await self.find(name)
        if doc is None:
            raise NotFound(kind="Service group", id=name, field="path.name")
        return doc

    async def insert(self, session: Session, doc: dict[str, Any]) -> None:
        await self.groups.insert_one(doc, session=session)

    async def replace(self, session: Session, doc: dict[str, Any]) -> None:
        await self.groups.replace_one({"name": doc["name"]}, doc, session=session)

    async def delete(self, session: Session, name: str) -> dict[str, Any] | None:
        return await self.groups.find_one_and_delete({"name": name}, session=session)

    async def list(self, *, marker: str | None, limit: int) -> list[dict[str, Any]]:
        return await page(
            self.groups, {}, GROUP_SORT, marker=marker, limit=limit, what="service group"
        )
