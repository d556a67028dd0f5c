"""Parked (dead-lettered) messages: moved from the ``<queue>.parked`` queues into the service's
``dead_letters`` collection, listed by the API, replayed into their queue or discarded on request.

Keeping them in the database (not only in RabbitMQ) lets the API list them without consuming them
and lets an operator see why each one failed. Each keeps the broker user who first sent it: a
replayed message is believed exactly as much as it was then (:mod:`roost_shared.publishers`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from pymongo import DESCENDING, IndexModel

from roost_shared.auth import require_admin, require_reader
from roost_shared.bus import ATTEMPT_HEADER, QUEUE_HEADER, REASON_HEADER, ROUTING_HEADER, Bus
from roost_shared.db import Database
from roost_shared.events import utcnow
from roost_shared.metrics import Metrics
from roost_shared.problems import NotFound
from roost_shared.publishers import SENDER_HEADER, sender_user

log = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
INDEXES = {DEAD_LETTERS: [IndexModel([("parked_at", DESCENDING)])]}


class DeadLetter(BaseModel):
    """A parked message as the API shows it."""

    id: str
    queue: str
    routing_key: str
    message_id: str | None
    reason: str
    attempts: int
    parked_at: datetime
    body: str
    sender: str | None = None


class DeadLetterStore:
    """Moves parked messages into the database and replays them on request."""

    def __init__(self, db: Database, bus: Bus, metrics: Metrics) -> None:
        self.db = db
        self.bus = bus
        self._channel: AbstractChannel | None = None
        self._stored = metrics.gauge("dead_letters_stored", "Parked messages awaiting an operator.")
        self._replayed = metrics.counter("dead_letters_replayed", "Parked messages replayed.")

    async def start(self, queues: list[str]) -> None:
        """Consume each consumer queue's ``.parked`` queue (declared by its ``Consumer``)."""
        assert self.bus.connection is not None
        self._channel = await self.bus.connection.channel()
        await self._channel.set_qos(prefetch_count=50)
        for queue in queues:
            parked = await self._channel.get_queue(f"{queue}.parked", ensure=True)
            await parked.consume(self._store, no_ack=False)
        await self.refresh_gauge()

    async def stop(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def refresh_gauge(self) -> None:
        self._stored.set(await self.db[DEAD_LETTERS].count_documents({}))

    async def _store(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        reason = headers.get(REASON_HEADER)
        if reason is None:
            # Dead-lettered by the broker itself: consumers crashed on it delivery-limit times.
            reason = "delivery-limit: consumers kept failing on this message"
        queue = str(headers.get(QUEUE_HEADER) or (message.routing_key or "unknown"))
        doc = {
            "_id": str(uuid.uuid4()),
            "queue": queue,
            "routing_key": str(headers.get(ROUTING_HEADER) or message.type or ""),
            "message_id": message.message_id,
            "reason": str(reason),
            "attempts": int(headers.get(ATTEMPT_HEADER, 0) or 0),
            "parked_at": utcnow(),
            "body": message.body.decode("utf-8", errors="replace"),
            "content_type": message.content_type,
            "sender": sender_user(message.user_id, headers, self.bus.user),
        }
        await self.db[DEAD_LETTERS].insert_one(doc)
        await message.ack()
        self._stored.inc()

    async def list(self, limit: int, queue: str | None = None) -> list[DeadLetter]:
        query: dict[str, Any] = {"queue": queue} if queue else {}
        docs = (
            await self.db[DEAD_LETTERS]
            .find(query)
            .sort("parked_at", DESCENDING)
            .limit(limit)
            .to_list()
        )
        return [_model(d) for d in docs]

    async def get(self, dead_letter_id: str) -> DeadLetter:
        doc = await self.db[DEAD_LETTERS].find_one({"_id": dead_letter_id})
        if doc is None:
            raise NotFound(kind="dead letter", id=dead_letter_id)
        return _model(doc)

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        """Send a parked message back to its queue (fresh retry budget), then forget it."""
        letter = await self.get(dead_letter_id)
        message = Message(
            letter.body.encode(),
            content_type="application/cloudevents+json",
            message_id=letter.message_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            # No recorded sender: "unknown", never the replaying service's own word.
            headers={"x-roost-replayed-from": letter.id, SENDER_HEADER: letter.sender or "unknown"},
        )
        await self.bus.publish_raw(message, exchange="", routing_key=letter.queue)
        await self.db[DEAD_LETTERS].delete_one({"_id": letter.id})
        self._replayed.inc()
        self._stored.dec()
        log.info("replayed dead letter %s into %s", letter.id, letter.queue)
        return letter

    async def discard(self, dead_letter_id: str) -> None:
        result = await self.db[DEAD_LETTERS].delete_one({"_id": dead_letter_id})
        if result.deleted_count == 0:
            raise NotFound(kind="dead letter", id=dead_letter_id)
        self._stored.dec()


def _model(doc: dict[str, Any]) -> DeadLetter:
    return DeadLetter(
        id=doc["_id"], **{k: doc.get(k) for k in DeadLetter.model_fields if k != "id"}
    )


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetter]


def _store(request: Request) -> DeadLetterStore:
    return request.app.state.platform.dead_letters


router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


@router.get("", response_model=DeadLetterList, dependencies=[Depends(require_reader)])
async def list_dead_letters(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    queue: str | None = None,
) -> DeadLetterList:
    """Parked messages, newest first."""
    return DeadLetterList(dead_letters=await _store(request).list(limit, queue))


@router.get("/{dead_letter_id}", response_model=DeadLetter, dependencies=[Depends(require_reader)])
async def show_dead_letter(request: Request, dead_letter_id: str) -> DeadLetter:
    return await _store(request).get(dead_letter_id)


@router.post(
    "/{dead_letter_id}/replay", response_model=DeadLetter, dependencies=[Depends(require_admin)]
)
async def replay_dead_letter(request: Request, dead_letter_id: str) -> DeadLetter:
    """Put a parked message back on its queue (after fixing whatever made it fail)."""
    return await _store(request).replay(dead_letter_id)


@router.delete("/{dead_letter_id}", status_code=204, dependencies=[Depends(require_admin)])
async def discard_dead_letter(request: Request, dead_letter_id: str) -> None:
    await _store(request).discard(dead_letter_id)
