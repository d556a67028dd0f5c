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

#: Where each service records the server sessions its transactions use (see
#: ``Database.reclaim_orphaned_transactions``).
TXN_SESSIONS = "txn_sessions"

#: Longer than any single operation Roost makes (the largest, a retention ``delete_many`` of
#: thousands of records, takes a few seconds), shorter than the 60 s an orphaned transaction
#: holds its locks.
DEFAULT_OPERATION_TIMEOUT_MS = 30_000


class Database:
    """One service's database plus the client it came from; created and closed by the lifespan."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        timeout_ms: int = 5_000,
        operation_timeout_ms: int = DEFAULT_OPERATION_TIMEOUT_MS,
    ) -> None:
        """``timeout_ms`` bounds finding the server and connecting; ``operation_timeout_ms``
        (PyMongo's ``timeoutMS``, 0: none) bounds every operation, each one inside a
        transaction and every cursor's whole iteration included, so a call blocked on a lock
        or a silent server fails instead of hanging its loop forever."""
        self.client: AsyncMongoClient = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            timeoutMS=operation_timeout_ms or None,
            appname=name,
        )
        self.db: AsyncDatabase = self.client[name]
        self._recorded_sessions: set[bytes] = set()

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
            await self._record_session(session)
            return await session.with_transaction(work)

    async def _record_session(self, session: Session) -> None:
        # The driver pools server sessions, so this writes once per pooled session, not per
        # transaction.
        lsid = session.session_id["id"]
        raw = bytes(lsid)
        if raw not in self._recorded_sessions:
            self._recorded_sessions.add(raw)
            await self.db[TXN_SESSIONS].update_one(
                {"_id": "sessions"}, {"$addToSet": {"lsids": lsid}}, upsert=True
            )

    async def reclaim_orphaned_transactions(self) -> int:
        """Abort the transactions a crashed predecessor left open; returns how many sessions.

        A process killed mid-transaction leaves it open on the server until the server's
        transaction lifetime (60 s in mongod and SecantusDB) runs out, and its uncommitted writes
        block every transaction that touches the same documents, so a restarted consumer
        redelivering those very messages would stall for a minute. Each process records its
        sessions' ids; its successor kills them at start-up (``killSessions``) and starts afresh.
        With several replicas this also aborts a live sibling's open transaction, which the
        driver then retries (a transient error), so it is safe, merely a little wasteful.

        Never this process's own sessions: a leader reclaiming on takeover found its own
        in-flight transaction among the recorded ones, and killing it left SecantusDB 0.7
        unresponsive to every later query on any database (seen in a full run: the whole suite
        after it failed). Ours are recorded again from the next transaction on.
        """
        doc = await self.db[TXN_SESSIONS].find_one_and_delete({"_id": "sessions"})
        lsids = [x for x in (doc or {}).get("lsids", []) if bytes(x) not in self._recorded_sessions]
        if lsids:
            try:
                await self.client.admin.command("killSessions", [{"id": x} for x in lsids])
            except PyMongoError as exc:
                log.warning("could not kill %d orphaned sessions: %s", len(lsids), exc)
                return 0
            log.info("aborted transactions of %d sessions left by a previous run", len(lsids))
        return len(lsids)

    def forget_recorded_sessions(self) -> None:
        """Record our sessions again from the next transaction on (after a replica's reclaim
        removed them from the record along with the dead one's)."""
        self._recorded_sessions.clear()

    async def close(self) -> None:
        await self.client.close()


def without_id(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored document minus Mongo's ``_id`` (API models never show it)."""
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k != "_id"}
