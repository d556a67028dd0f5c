"""Live updates: bus events fanned out to every open browser as server-sent events.

The dashboard binds one exclusive, auto-delete queue of its own (no inbox, no acks: a browser
that misses an event while disconnected reloads the page on reconnect) to the events pages show,
and hands each event, shaped for the browser, to every subscriber's bounded queue. A subscriber
too slow to keep up is told to reload rather than allowed to grow memory.

Each event gets a sequence number, and the last :data:`SUBSCRIBER_BACKLOG` are kept. A page is
rendered with the number seen when its request began (``live_seq``, read before the page asks
the APIs) and opens its stream with ``?since=`` that number: the events that arrived while the
page was being rendered and loaded are replayed first, so a change that happens in that window
(a strategy failing 50 ms after Apply) is not lost. Handlers in the page are idempotent, so an
event the rendered page already showed does no harm. A page older than the kept events, or
rendered by an earlier dashboard process, is told to reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from roost_shared.agentbus import agent_id
from roost_shared.bus import EVENTS_EXCHANGE, Bus
from roost_shared.catalog import host_identity, parse_data
from roost_shared.metrics import Metrics
from roost_shared.publishers import refusal

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
        #: Number of the last event fanned out (0: none yet in this process).
        self.seq = 0
        self._recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=SUBSCRIBER_BACKLOG)
        self._channel: AbstractChannel | None = None
        self._received = metrics.counter(
            "live_events", "Bus events received for live pages, by type.", ["type"]
        )
        self._dropped = metrics.counter(
            "live_overflows", "Browsers told to reload because they fell behind."
        )
        self._gauge = metrics.gauge("live_streams", "Open event streams (browsers).")
        self._forged = metrics.counter(
            "live_events_forged", "Bus events not shown: not published by their owner."
        )

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
            event_type = str(envelope.get("type"))
            self._received.labels(event_type).inc()
            claimed = host_identity(parse_data(event_type, envelope.get("data") or {}))
            forged = refusal(event_type, message.user_id, agent_id(claimed) if claimed else None)
            item = None if forged else self.shape(envelope)
        except Exception:
            log.exception("live event not shown (routing key %s)", message.routing_key)
            return
        if forged:
            self._forged.inc()
            log.warning("live event not shown: %s", forged)
            return
        if item is not None:
            self.publish(item)

    def publish(self, item: dict[str, Any]) -> None:
        self.seq += 1
        self._recent.append((self.seq, item))
        for q in list(self.subscribers):
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                self._dropped.inc()
                q.get_nowait()
                q.put_nowait({"kind": "reload"})

    @contextlib.asynccontextmanager
    async def subscribe(
        self, since: int | None = None
    ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the events from now on, preceded by those after ``since`` (a page's
        ``live_seq``), or by one ``reload`` when they are no longer all kept."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        if since is not None and since != self.seq:
            oldest = self._recent[0][0] if self._recent else self.seq + 1
            if since > self.seq or since < oldest - 1:
                q.put_nowait({"kind": "reload"})  # another process's page, or too far behind
            else:
                for seq, item in self._recent:
                    if seq > since:
                        q.put_nowait(item)
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
