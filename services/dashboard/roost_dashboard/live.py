"""Live updates: bus events fanned out to every open browser as server-sent events.

The dashboard binds one exclusive, auto-delete queue of its own (no inbox, no acks: a browser
that misses an event while disconnected reloads the page on reconnect, so nothing is replayed)
to the events pages show, and hands each event, shaped for the browser, to every subscriber's
bounded queue. A subscriber too slow to keep up is told to reload rather than allowed to grow
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from roost_shared.bus import EVENTS_EXCHANGE, Bus
from roost_shared.metrics import Metrics

log = logging.getLogger(__name__)

#: Turns an envelope (as JSON) into what browsers get (``{"kind", ...}``), or None to skip it.
Shape = Callable[[dict[str, Any]], dict[str, Any] | None]

SUBSCRIBER_BACKLOG = 500


class Broadcaster:
    def __init__(self, bus: Bus, metrics: Metrics, bindings: Sequence[str], shape: Shape) -> None:
        self.bus = bus
        self.bindings = tuple(bindings)
        self.shape = shape
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._channel: AbstractChannel | None = None
        self._received = metrics.counter(
            "live_events", "Bus events received for live pages, by type.", ["type"]
        )
        self._dropped = metrics.counter(
            "live_overflows", "Browsers told to reload because they fell behind."
        )
        self._gauge = metrics.gauge("live_streams", "Open event streams (browsers).")

    async def start(self) -> None:
        assert self.bus.connection is not None
        self._channel = await self.bus.connection.channel()
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in self.bindings:
            await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
        await queue.consume(self._on_message, no_ack=True)

    async def stop(self) -> None:
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait({"kind": "bye"})
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = json.loads(message.body)
            self._received.labels(str(envelope.get("type"))).inc()
            item = self.shape(envelope)
        except Exception:
            log.exception("live event not shown (routing key %s)", message.routing_key)
            return
        if item is not None:
            self.publish(item)

    def publish(self, item: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                self._dropped.inc()
                q.get_nowait()
                q.put_nowait({"kind": "reload"})

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.subscribers.add(q)
        self._gauge.set(len(self.subscribers))
        try:
            yield q
        finally:
            self.subscribers.discard(q)
            self._gauge.set(len(self.subscribers))


def sse(item: dict[str, Any]) -> str:
    """One server-sent event: ``event: <kind>`` and the item as JSON on one data line."""
    return f"event: {item['kind']}\ndata: {json.dumps(item, default=str)}\n\n"
