"""What the service service knows about hosts (``hosts`` collection), learnt from the bus.

``config.host.added|updated|deleted`` give a host's hostname, management MAC (the agent's
command address) and labels; ``host.state.changed`` gives its StarlingX states. One document per
host, keyed by the config uuid::

    {_id: uuid, hostname, mgmt_mac, labels, administrative, operational, availability,
     state_time}

``fenced`` is set by the host service's ``recovery-fenced`` transition (BMC power off, read
back: nothing of the old host runs any more) and cleared when the host is in service again; the
controller takes an active away from a fenced host without waiting for its lease to expire.

A host can run instances only when it is **unlocked-enabled** and ``available`` or
``degraded`` (:func:`healthy`); a host whose states never arrived is not healthy.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel

from roost_shared.catalog import HostRecord, HostStateChanged
from roost_shared.db import Database, Session

HOSTS = "hosts"
INDEXES: dict[str, list[IndexModel]] = {HOSTS: [IndexModel([("hostname", ASCENDING)])]}
RUNNABLE = ("available", "degraded")
#: ``host.state.changed`` reason of a confirmed fence (roost_host.logic.RECOVERY_FENCED).
FENCED_REASON = "recovery-fenced"


def healthy(host: dict[str, Any] | None) -> bool:
    """True if instances may run on ``host`` (unlocked-enabled, available or degraded)."""
    return (
        host is not None
        and bool(host.get("mgmt_mac"))
        and host.get("administrative") == "unlocked"
        and host.get("operational") == "enabled"
        and host.get("availability") in RUNNABLE
    )


def describe(hostname: str, host: dict[str, Any] | None) -> str:
    """Why ``hostname`` can or cannot run instances, in words."""
    if host is None:
        return f"host {hostname} is unknown"
    if host.get("administrative") is None:
        return f"host {hostname}: states not known yet"
    states = f"{host['administrative']}-{host['operational']}-{host['availability']}"
    return f"host {hostname} is {states}"


class HostBook:
    """Reads and writes of the ``hosts`` collection."""

    def __init__(self, db: Database) -> None:
        self.hosts = db[HOSTS]

    async def learn(self, session: Session, verb: str, record: HostRecord) -> None:
        """Apply ``config.host.<verb>``."""
        if verb == "deleted":
            await self.hosts.delete_one({"_id": record.uuid}, session=session)
            return
        fields = {
            "hostname": record.hostname,
            "mgmt_mac": record.mgmt_mac,
            "labels": record.labels,
        }
        await self.hosts.update_one(
            {"_id": record.uuid}, {"$set": fields}, upsert=True, session=session
        )

    async def state(self, session: Session, change: HostStateChanged) -> None:
        """Apply ``host.state.changed`` unless a newer transition is already stored."""
        current = await self.hosts.find_one({"_id": change.uuid}, session=session)
        if (
            current
            and current.get("state_time")
            and _naive(current["state_time"]) > _naive(change.time)
        ):
            return
        fields: dict[str, Any] = {
            "administrative": change.to_administrative,
            "operational": change.to_operational,
            "availability": change.to_availability,
            "state_time": change.time,
        }
        if change.reason == FENCED_REASON:
            fields["fenced"] = True
        elif change.to_availability in RUNNABLE:
            fields["fenced"] = False
        if change.hostname:
            fields["hostname"] = change.hostname
        await self.hosts.update_one(
            {"_id": change.uuid}, {"$set": fields}, upsert=True, session=session
        )

    async def by_name(self) -> dict[str, dict[str, Any]]:
        """Every host with a hostname, by hostname."""
        docs = await self.hosts.find({"hostname": {"$ne": None}}).to_list()
        return {d["hostname"]: d for d in docs}


def _naive(t: Any) -> Any:
    # BSON dates come back naive (UTC); events carry aware times.
    return t.replace(tzinfo=None) if getattr(t, "tzinfo", None) else t
