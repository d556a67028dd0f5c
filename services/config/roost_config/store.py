"""The config service's collections, their indexes and its queries (database ``roost_config``).

* ``system``: one document (``_id: "system"``).
* ``hosts``: one per host; ``uuid``, ``mgmt_mac`` and assigned ``hostname`` are unique (a
  discovered host has no hostname, so the hostname index is partial). The BMC password is kept
  only as ``bmc_password_enc`` (Fernet ciphertext).
* ``inventory``: the last hardware report per management MAC (``_id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne

from roost_shared.db import Database, Session
from roost_shared.paging import SortSpec, page
from roost_shared.problems import NotFound
from roost_shared.refs import host_query

SYSTEM = "system"
HOSTS = "hosts"
INVENTORY = "inventory"

#: Host list order: creation order like ``system host-list`` (by id); uuid breaks ties.
HOST_SORT: SortSpec = [("created_at", 1), ("uuid", 1)]

INDEXES: dict[str, list[IndexModel]] = {
    HOSTS: [
        IndexModel([("uuid", ASCENDING)], unique=True),
        IndexModel([("mgmt_mac", ASCENDING)], unique=True),
        IndexModel(
            [("hostname", ASCENDING)],
            unique=True,
            partialFilterExpression={"hostname": {"$type": "string"}},
        ),
        IndexModel([(f, ASCENDING) for f, _ in HOST_SORT]),
        IndexModel([("out_of_date_since", ASCENDING)]),
        IndexModel([("conflict_with", ASCENDING)]),
    ],
}


class ConfigStore:
    """Queries over the config collections; writes take the caller's session."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.system = db[SYSTEM]
        self.hosts = db[HOSTS]
        self.inventory = db[INVENTORY]

    # System ---------------------------------------------------------------------------------

    async def ensure_system(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The system document, created with ``defaults`` the first time."""
        return await self.system.find_one_and_update(
            {"_id": "system"},
            {"$setOnInsert": defaults},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    async def get_system(self, session: Session | None = None) -> dict[str, Any]:
        doc = await self.system.find_one({"_id": "system"}, session=session)
        assert doc is not None, "the system document is made at start-up"
        return doc

    async def update_system(
        self, session: Session, changes: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        return await self.system.find_one_and_update(
            {"_id": "system"},
            {"$set": {**changes, "updated_at": now}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )

    # Hosts ----------------------------------------------------------------------------------

    async def host(self, ref: str, session: Session | None = None) -> dict[str, Any]:
        """A host by uuid, management MAC or assigned hostname (404 otherwise)."""
        query = host_query(ref)
        doc = await self.hosts.find_one(query, session=session) if query else None
        if doc is None:
            raise NotFound(kind="Host", id=ref)
        return doc

    async def host_by_mac(self, mac: str, session: Session | None = None) -> dict[str, Any] | None:
        return await self.hosts.find_one({"mgmt_mac": mac}, session=session)

    async def hosts_by_macs(self, session: Session, macs: set[str]) -> dict[str, dict[str, Any]]:
        """The hosts with these management MACs, by MAC (one indexed query)."""
        cursor = self.hosts.find({"mgmt_mac": {"$in": sorted(macs)}}, session=session)
        return {doc["mgmt_mac"]: doc async for doc in cursor}

    async def host_by_hostname(
        self, hostname: str, session: Session | None = None
    ) -> dict[str, Any] | None:
        return await self.hosts.find_one({"hostname": hostname}, session=session)

    async def insert_host(self, session: Session, doc: dict[str, Any]) -> None:
        await self.hosts.insert_one(doc, session=session)

    async def update_host(
        self, session: Session, host_uuid: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply ``changes`` (``None`` values are stored as null) and return the new document."""
        doc = await self.hosts.find_one_and_update(
            {"uuid": host_uuid},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise NotFound(kind="Host", id=host_uuid)
        return doc

    async def update_hosts(
        self, session: Session, changes: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Apply ``(uuid, changes)`` to many hosts in one round trip."""
        if changes:
            await self.hosts.bulk_write(
                [
                    UpdateOne(
                        {
                            "uuid": u,
                        },
                        {"$set": c},
                    )
                    for u, c in changes
                ],
                ordered=False,
                session=session,
            )

    async def delete_host(self, session: Session, host_uuid: str) -> None:
        await self.hosts.delete_one({"uuid": host_uuid}, session=session)

    async def configurable_hosts(self, session: Session) -> list[dict[str, Any]]:
        """Hosts with a hostname and a personality (those that have a configuration); read in
        full before the caller writes to them in the same transaction."""
        query = {"hostname": {"$type": "string"}, "personality": {"$type": "string"}}
        return await self.hosts.find(query, session=session).to_list()

    async def hosts_in_conflict_with(self, session: Session, hostname: str) -> list[dict[str, Any]]:
        return await self.hosts.find({"conflict_with": hostname}, session=session).to_list()

    async def drift_candidates(self, session: Session | None = None) -> list[dict[str, Any]]:
        """Hosts lagging behind their target, or still alarmed for it."""
        return await self.hosts.find(
            {"$or": [{"out_of_date_since": {"$type": "date"}}, {"drift_alarmed": True}]},
            session=session,
        ).to_list()

    async def list_hosts(
        self, query: dict[str, Any], *, marker: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await page(self.hosts, query, HOST_SORT, marker=marker, limit=limit, what="host")

    # Inventory ------------------------------------------------------------------------------

    async def inventory_of(self, mac: str, session: Session | None = None) -> dict[str, Any] | None:
        return await self.inventory.find_one({"_id": mac}, session=session)

    async def put_inventory(self, session: Session, mac: str, doc: dict[str, Any]) -> None:
        await self.inventory.replace_one({"_id": mac}, doc, upsert=True, session=session)

    async def delete_inventory(self, session: Session, mac: str) -> None:
        await self.inventory.delete_one({"_id": mac}, session=session)
