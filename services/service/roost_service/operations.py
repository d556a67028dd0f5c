"""Declaring and removing service groups: each change and its event commit together."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from roost_service import logic
from roost_service.inventory import HostInventory
from roost_service.logic import Problem
from roost_service.models import GroupState, ServiceGroupSpec
from roost_service.store import GroupStore
from roost_shared.catalog import ServiceGroupRecord
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.outbox import Outbox
from roost_shared.problems import NotFound

SOURCE = "roost/service"


class GroupRefused(Exception):
    """A group declaration with one or more problems (rendered as one 422 naming each)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first.field}: {first.message}{more}")


@dataclass
class GroupOperations:
    db: Database
    store: GroupStore
    outbox: Outbox
    inventory: HostInventory

    async def put(self, name: str, spec: ServiceGroupSpec) -> tuple[dict[str, Any], bool]:
        """Create or replace group ``name``; returns (document, created). An unchanged
        declaration changes nothing and emits nothing."""
        problems = logic.check_group(name, spec)
        if not problems and spec.members.hosts:
            problems = await self.inventory.unknown(spec.members.hosts)
        if problems:
            raise GroupRefused(problems)
        declared = logic.spec_document(spec, name)
        derived = {
            "slots": logic.slots(spec),
            "start_order": logic.start_order(spec.services),
        }

        async def work(session: Session) -> tuple[dict[str, Any], bool]:
            # Milliseconds: what a BSON date keeps, so the answer equals what a GET reads back.
            now = utcnow_ms()
            old = await self.store.find(name, session)
            if old is not None:
                if all(old.get(k) == v for k, v in declared.items()):
                    return old, False
                doc = {
                    **declared,
                    **derived,
                    "uuid": old["uuid"],
                    "state": old["state"],
                    # Operator controls outlive a new declaration.
                    "admin": old.get("admin", "enabled"),
                    "locked_members": old.get("locked_members", []),
                    "version": old["version"] + 1,
                    "created_at": old["created_at"],
                    "updated_at": now,
                }
                await self.store.replace(session, doc)
                verb = "updated"
            else:
                doc = {
                    **declared,
                    **derived,
                    "uuid": str(uuid.uuid4()),
                    # Placement and instances come later: a declared group is not placed yet.
                    "state": GroupState.unplaced.value,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                await self.store.insert(session, doc)
                verb = "created"
            await self.outbox.add(session, [event(doc, verb)])
            return doc, verb == "created"

        try:
            result = await self.db.in_transaction(work)
        except DuplicateKeyError:
            # A concurrent PUT created the same name first: ours becomes an update of it.
            result = await self.db.in_transaction(work)
        self.outbox.wake()
        return result

    async def delete(self, name: str) -> dict[str, Any]:
        """Remove group ``name`` (its leases' documents stay, so fencing tokens never go
        back should it be declared again)."""

        async def work(session: Session) -> dict[str, Any]:
            doc = await self.store.delete(session, name)
            if doc is None:
                raise NotFound(kind="Service group", id=name, field="path.name")
            doc["updated_at"] = utcnow_ms()
            await self.outbox.add(session, [event(doc, "deleted")])
            return doc

        doc = await self.db.in_transaction(work)
        self.outbox.wake()
        return doc


def event(doc: dict[str, Any], verb: str) -> Envelope:
    """``service.group.<verb>`` for a stored group document."""
    red = doc["redundancy"]
    model = red["model"]
    active = {"active-standby": 1, "n-plus-m": red.get("active")}.get(model)
    standby = {"active-standby": 1, "n-plus-m": red.get("standby") or 0}.get(model, 0)
    record = ServiceGroupRecord(
        uuid=doc["uuid"],
        name=doc["name"],
        redundancy=model,
        active=active,
        standby=standby,
        member_hosts=doc["members"].get("hosts") or [],
        member_selector=doc["members"].get("selector") or {},
        services=doc["start_order"],
        state=doc["state"],
        version=doc["version"],
        time=doc["updated_at"],
    )
    return Envelope.of(
        record, type=f"service.group.{verb}", source=SOURCE, subject=f"service-group={doc['name']}"
    )
