"""The ``strategies`` collection: the one update strategy (``_id: "current"``).

One strategy at a time, as in StarlingX vim: the document holds the options, the state and every
stage and step with its state, times and reason. The executor updates it field by field
(``stages.<i>.steps.<j>.state``) in a transaction with the ``software.strategy.changed`` event it
causes, so progress and events never disagree.
"""

from __future__ import annotations

from typing import Any

from pymongo import IndexModel
from pymongo.errors import DuplicateKeyError

from roost_shared.db import Database, Session
from roost_shared.problems import Conflict, NotFound

STRATEGIES = "strategies"
CURRENT = "current"
INDEXES: dict[str, list[IndexModel]] = {}


class StrategyStore:
    def __init__(self, db: Database) -> None:
        self.strategies = db[STRATEGIES]

    async def current(self, session: Session | None = None) -> dict[str, Any] | None:
        return await self.strategies.find_one({"_id": CURRENT}, session=session)

    async def get(self) -> dict[str, Any]:
        doc = await self.current()
        if doc is None:
            raise NotFound(kind="Strategy", id="(none)", field="strategy")
        return doc

    async def insert(self, session: Session, doc: dict[str, Any]) -> None:
        try:
            await self.strategies.insert_one({**doc, "_id": CURRENT}, session=session)
        except DuplicateKeyError:
            raise Conflict(
                kind="Strategy",
                id="",
                reason="one already exists; delete it first (roost strategy delete)",
                field="strategy",
            ) from None

    async def set(self, session: Session, uuid: str, fields: dict[str, Any]) -> dict[str, Any]:
        """``$set`` fields of the strategy ``uuid``; the document after the change."""
        doc = await self.strategies.find_one_and_update(
            {"_id": CURRENT, "uuid": uuid},
            {"$set": fields},
            session=session,
            return_document=True,
        )
        if doc is None:
            raise NotFound(kind="Strategy", id=uuid, field="strategy")
        return doc

    async def delete(self, session: Session) -> dict[str, Any] | None:
        return await self.strategies.find_one_and_delete({"_id": CURRENT}, session=session)
