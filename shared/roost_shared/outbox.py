"""Transactional outbox and its relay.

A service writes the events a state change causes into its ``outbox`` collection in the same
transaction as the change (``Outbox.add(session, ...)``). The relay publishes them in insertion
order with broker confirms, then deletes them. A crash before the delete republishes on restart;
consumers de-duplicate by event id, so nothing is lost and nothing takes effect twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from bson import ObjectId

from roost_shared.bus import EVENTS_EXCHANGE, Bus, Destined
from roost_shared.db import Database, Session
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_shared.retry import backoff

log = logging.getLogger(__name__)

OUTBOX = "outbox"


class Outbox:
    """Write side (``add``) and relay loop (``run``) of one service's outbox."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        metrics: Metrics,
        *,
        poll_s: float = 1.0,
        batch_max: int = 500,
    ) -> None:
        self.db = db
        self.bus = bus
        self.poll_s = poll_s
        self.batch_max = batch_max
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._relayed = metrics.counter("outbox_relayed", "Outbox events published and removed.")
        self._pending = metrics.gauge("outbox_pending", "Outbox events seen waiting to publish.")
        self._failures = metrics.counter("outbox_publish_failures", "Relay publish failures.")

    async def add(
        self,
        session: Session | None,
        envelopes: Sequence[Envelope],
        *,
        exchange: str = EVENTS_EXCHANGE,
        routing_key: str | None = None,
    ) -> None:
        """Record messages to publish; pass the session of the transaction that causes them.

        Events go to ``roost.events`` keyed by their type; a command passes
        ``exchange=COMMANDS_EXCHANGE`` and its agent's ``routing_key``.
        """
        await self.add_to(session, [(e, exchange, routing_key) for e in envelopes])

    async def add_to(self, session: Session | None, items: Sequence[Destined]) -> None:
        """Record messages with a destination each (one write for a whole fan-out)."""
        if not items:
            return
        await self.db[OUTBOX].insert_many(
            [
                {
                    "_id": ObjectId(),
                    "envelope": e.model_dump(mode="json", exclude_none=True),
                    "exchange": exchange,
                    "routing_key": routing_key,
                }
                for e, exchange, routing_key in items
            ],
            session=session,
        )

    def wake(self) -> None:
        """Tell the relay there is something to publish (call after the transaction commits)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Publish until cancelled; waits for ``wake`` (or the poll period) when empty."""
        delays = backoff(initial=0.2, cap=10.0)
        while True:
            try:
                moved = await self.relay_once()
                delays = backoff(initial=0.2, cap=10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.inc()
                delay = next(delays)
                log.warning("outbox relay: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if moved < self.batch_max:
                self._idle.set()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                self._idle.clear()

    async def relay_once(self) -> int:
        """Publish the oldest batch of pending events; returns how many were relayed."""
        docs = await self.db[OUTBOX].find({}).sort("_id", 1).limit(self.batch_max).to_list()
        self._pending.set(len(docs))
        if not docs:
            return 0
        # One confirm round for the whole batch, events and commands alike, in outbox order.
        await self.bus.publish_to(
            [
                (
                    Envelope.model_validate(d["envelope"]),
                    d.get("exchange", EVENTS_EXCHANGE),
                    d.get("routing_key"),
                )
                for d in docs
            ]
        )
        await self.db[OUTBOX].delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        self._relayed.inc(len(docs))
        return len(docs)

    async def drained(self, timeout_s: float = 10.0) -> bool:
        """Wait until the outbox is empty (shutdown, tests); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.db[OUTBOX].count_documents({}, limit=1) == 0:
                return True
            self.wake()
            await asyncio.sleep(0.05)
        return False
