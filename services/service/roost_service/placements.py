"""Storage of placed instances and of the agents' reports.

* ``placements``: **one document per group** holding all its instances::

      {_id: <group>, instances: [{instance_id, group, service, host, role, token, state,
                                  reason, assigned_at, last_report}], alarms: [ids],
       updated_at}

  Only the controller writes it, in one single-document write per decision, so a reader never
  sees half of a switch (for example the new active before the old one stepped down): this is
  what keeps "never two ``enabled-active``" true for every read of the API, not only at rest.
* ``reports``: the latest ``agent.instance.changed`` of each instance, keyed by
  ``instance_id`` (written by the consumer; a report older than the stored one is ignored).
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel

from roost_shared.catalog import InstanceChanged
from roost_shared.db import Database, Session

PLACEMENTS = "placements"
REPORTS = "reports"
INDEXES: dict[str, list[IndexModel]] = {REPORTS: [IndexModel([("group", ASCENDING)])]}


def instance_id(group: str, service: str, host: str) -> str:
    """Stable per (group, service, host); also a valid agent process name."""
    return f"{group}.{service}.{host}"


class PlacementStore:
    """Reads and writes of ``placements`` and ``reports``."""

    def __init__(self, db: Database) -> None:
        self.placements = db[PLACEMENTS]
        self.reports = db[REPORTS]

    async def record_report(self, session: Session, report: InstanceChanged) -> None:
        doc = report.model_dump(mode="python")
        # Replace unless the stored report is newer (out-of-order delivery).
        stored = await self.reports.find_one({"_id": report.instance_id}, session=session)
        if stored is not None and _naive(stored["time"]) > _naive(report.time):
            return
        await self.reports.replace_one(
            {"_id": report.instance_id},
            {"_id": report.instance_id, **doc},
            upsert=True,
            session=session,
        )

    async def reports_of(self, group: str) -> dict[str, dict[str, Any]]:
        docs = await self.reports.find({"group": group}).to_list()
        return {d["_id"]: d for d in docs}

    async def find(self, group: str) -> dict[str, Any] | None:
        return await self.placements.find_one({"_id": group})

    async def names(self) -> list[str]:
        return [d["_id"] for d in await self.placements.find({}, {"_id": 1}).to_list()]

    async def save(self, session: Session, doc: dict[str, Any]) -> None:
        await self.placements.replace_one({"_id": doc["_id"]}, doc, upsert=True, session=session)

    async def forget(self, session: Session, group: str) -> None:
        await self.placements.delete_one({"_id": group}, session=session)
        await self.reports.delete_many({"group": group}, session=session)


def _naive(t: Any) -> Any:
    return t.replace(tzinfo=None) if getattr(t, "tzinfo", None) else t
