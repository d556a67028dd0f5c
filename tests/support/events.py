"""Listening to events in tests: every event matching some routing patterns, on an exclusive
queue of the test's own."""

from __future__ import annotations

import json
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from roost_shared.bus import EVENTS_EXCHANGE, Bus
from tests.support.waiting import eventually


class Listener:
    """Every event matching a pattern, in arrival order (``got``: the envelopes as JSON)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    @classmethod
    async def on(cls, bus: Bus, *patterns: str) -> Listener:
        assert bus.connection is not None
        channel = await bus.connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for p in patterns:
            await queue.bind(EVENTS_EXCHANGE, routing_key=p)
        listener = cls()

        async def on_message(message: AbstractIncomingMessage) -> None:
            listener.got.append(json.loads(message.body))
            await message.ack()

        await queue.consume(on_message)
        return listener

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.got if e["type"] == event_type]

    async def wait_for(self, what: str, **match: Any) -> dict[str, Any]:
        """The first event whose type and data fields equal ``match`` (``type=...`` too)."""
        event_type = match.pop("type")

        async def probe():
            for e in self.got:
                if e["type"] == event_type and all(e["data"].get(k) == v for k, v in match.items()):
                    return e
            return None

        return await eventually(probe, what=what)
