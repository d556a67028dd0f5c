"""The instance report queue: never blocks, keeps reports while publishing fails, and on
overflow keeps the newest report per instance (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import BaseModel

from roost_agent.reports import Reporter
from roost_shared.events import Envelope
from tests.support.waiting import eventually


class Note(BaseModel):
    instance: str
    n: int


def note(instance: str, n: int) -> Envelope:
    return Envelope.of(Note(instance=instance, n=n), source="test", type="test.note")


async def test_kept_while_publishing_fails_then_sent_in_order_latest_per_instance():
    broker_up = False
    sent: list[tuple[str, int]] = []

    async def publish(envelopes: Sequence[Envelope]) -> None:
        if not broker_up:
            raise ConnectionError("bus is not connected")
        sent.extend((e.data["instance"], e.data["n"]) for e in envelopes)

    reporter = Reporter(publish, limit=4)
    reporter.start()
    for n in range(3):
        reporter.put("a", note("a", n))
        reporter.put("b", note("b", n))
    reporter.put("c", note("c", 0))
    await eventually(_failed(reporter), what="a failed publish")
    # The 5th report overflowed the limit: a0 b0 a1 b1 a2 became b1 a2 (newest per instance).
    assert sent == [] and reporter.pending == 4 and reporter.dropped == 3

    broker_up = True
    reporter.kick()  # a reconnect
    await eventually(_empty(reporter), timeout=2, what="the queue to drain")
    assert sent == [("b", 1), ("a", 2), ("b", 2), ("c", 0)]
    reporter.put("a", note("a", 3))
    await eventually(_empty(reporter), timeout=2, what="a prompt publish")
    assert sent[-1] == ("a", 3)
    await reporter.close()


def _failed(reporter: Reporter):
    async def probe() -> bool:
        return reporter.failures > 0

    return probe


def _empty(reporter: Reporter):
    async def probe() -> bool:
        await asyncio.sleep(0)
        return reporter.pending == 0 and reporter.published > 0

    return probe
