"""Nothing raised is lost and nothing is reported twice: the fault service is SIGKILLed mid-stream,
the broker restarts while producers publish."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter

import pytest
from aio_pika.abc import AbstractIncomingMessage

from roost_shared.bus import EVENTS_EXCHANGE
from roost_sim.ports import free_port, is_listening
from tests.support.fault import alarm, metric
from tests.support.receiver import WebhookReceiver
from tests.support.waiting import eventually


async def _summary_total(http) -> int:
    s = (await http.get("/v1/alarms/summary")).json()
    return s["critical"] + s["major"] + s["minor"] + s["warnings"]


async def _listen(bus, pattern: str) -> list[dict]:
    """Collect the envelopes of events matching ``pattern`` (a subscriber of our own)."""
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
    got: list[dict] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        import json

        got.append(json.loads(message.body))
        await message.ack()

    await queue.consume(on_message)
    return got


async def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(stack):
    n = 1000
    fault = stack.start("fault")
    bus = await stack.bus()
    raised_events = await _listen(bus, "fault.alarm.raised")
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    try:
        async with fault.client(stack.tokens.admin) as http:
            r = await http.post("/v1/subscriptions", json={"url": receiver.url})
            assert r.status_code == 201
            batch = [alarm(f"host=k{i:04d}") for i in range(n)]
            for start in range(0, n, 100):
                await bus.publish(batch[start : start + 100])

            async def some_done():
                return await _summary_total(http) >= 50

            await eventually(some_done, what="processing under way")
        fault.kill()  # SIGKILL: no clean-up, batches in flight, outbox and webhooks mid-way
        stored_at_kill = None
        fault.start()  # same database, same queue
        async with fault.client(stack.tokens.admin) as http:
            stored_at_kill = await _summary_total(http)

            async def all_stored():
                return await _summary_total(http) == n

            try:
                await eventually(all_stored, timeout=60, what=f"{n} alarms after restart")
            except AssertionError:
                print("LOG", fault.log_path, await _summary_total(http))
                raise
            sets = (await http.get("/v1/event_log", params={"alarms": True, "limit": 2000})).json()
            assert len(sets["event_log"]) == n, "each event logged exactly once"

        await eventually(
            lambda: _unique_at_least(receiver, n), timeout=60, what=f"{n} webhook notifications"
        )
        per_entity = Counter(x["alarm"]["entity_instance_id"] for x in receiver.unique().values())
        assert len(per_entity) == n and set(per_entity.values()) == {1}, (
            "exactly one notification per raised alarm"
        )

        async def all_events():
            return len({e["id"] for e in raised_events}) >= n

        await eventually(all_events, timeout=30, what="every fault.alarm.raised on the bus")
        subjects = Counter(e["subject"] for e in {e["id"]: e for e in raised_events}.values())
        assert len(subjects) == n and set(subjects.values()) == {1}
        assert (stored_at_kill is not None and stored_at_kill < n) or stored_at_kill == n
    finally:
        await receiver.stop()


async def _unique_at_least(receiver, n):
    return len(receiver.unique()) >= n


@pytest.mark.slow
async def test_broker_restart_while_producers_publish_loses_nothing(stack):
    n = 400
    fault = stack.start("fault")
    bus = await stack.bus()
    published = 0

    async def produce():
        nonlocal published
        for i in range(n):
            # A producer without an outbox retries until the broker confirms.
            await bus.publish([alarm(f"host=b{i:04d}")], retry_for_s=120)
            published += 1
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(produce())
    await eventually(lambda: _at_least(lambda: published, 50), what="producer under way")
    await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120
    )
    try:
        assert not is_listening(5672)
    finally:
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-q", "start_app"], check=True, timeout=120
        )
    await asyncio.wait_for(producer, 120)
    async with fault.client(stack.tokens.reader) as http:

        async def all_stored():
            return await _summary_total(http) == n

        await eventually(all_stored, timeout=60, what=f"{n} alarms after broker restart")
        ready = (await http.get("/readyz")).json()
        assert ready["checks"]["bus"] is True
        assert await metric(http, "roost_bus_dead_lettered_total") == 0


async def _at_least(get, n):
    return get() >= n
