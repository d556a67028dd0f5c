"""The database: PyMongo's async API over the MongoDB wire protocol.

Motor, named in the design card, was deprecated in May 2025 and reached end of life in May 2026;
PyMongo's ``AsyncMongoClient`` is its official successor, so Roost uses it directly. The same code
talks to the embedded SecantusDB server (``make run``, tests) and to mongod (compose, Kubernetes).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from roost_shared.retry import until_available

log = logging.getLogger(__name__)
T = TypeVar("T")

Session = AsyncClientSession


class Database:
    """One service's database plus the client it came from; created and closed by the lifespan."""

    def __init__(self, url: str, name: str, *, timeout_ms: int = 5_000) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname=name,
        )
        self.db: AsyncDatabase = self.client[name]

    def __getitem__(self, collection: str):
        return self.db[collection]

    async def connect(self, deadline_s: float = 60.0) -> None:
        """Wait until the server answers (it may still be starting)."""
        async for attempt in until_available(
            "database", deadline_s=deadline_s, exceptions=(PyMongoError,)
        ):
            with attempt:
                await self.client.admin.command("ping")

    async def ping(self) -> bool:
        """True when the server answers now (readiness)."""
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def ensure_indexes(self, indexes: Mapping[str, Sequence[IndexModel]]) -> None:
        """Create the declared indexes (idempotent) at start-up."""
        for collection, models in indexes.items():
            if models:
                await self.db[collection].create_indexes(list(models))

    async def in_transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``work(session)`` in a multi-document transaction, retried on transient errors.

        Everything ``work`` writes with the session commits together or not at all: this is what
        makes the outbox and the inbox exact.
        """
        async with self.client.start_session() as session:
            return await session.with_transaction(work)

    async def close(self) -> None:
        await self.client.close()


def without_id(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored document minus Mongo's ``_id`` (API models never show it)."""
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k != "_id"}
