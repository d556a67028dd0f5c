"""Two replicas of a service on one vhost and one database (issue 9, item 3): consumed work
splits between them, the singleton loops and the outbox relay run on the leader only, and
killing a replica mid-work loses nothing and does nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from roost_shared.bus import EVENTS_EXCHANGE
from tests.support.fault import alarm, alarms, clear, events, metric
from tests.support.site import open_site, where
from tests.support.stack import ServiceUnderTest
from tests.support.waiting import eventually


def replicas(stack: Any, name: str, count: int = 2, **env: str) -> list[ServiceUnderTest]:
    """``count`` processes of service ``name`` sharing one database (each its own port and
    log file), as a Deployment with ``replicas: count`` would run them."""
    db = f"roost_{name}_{uuid.uuid4().hex[:8]}"
    return [stack.start(name, database=db, replica=i, **env) for i in range(count)]


async def leading(svc: ServiceUnderTest) -> bool:
    """What the replica's /readyz says about its leadership (False if it does not answer)."""
    try:
        async with svc.client(None) as http:
            r = await http.get("/readyz")
    except Exception:
        return False
    return r.status_code == 200 and bool(r.json()["checks"].get("leader"))


async def the_leader(group: list[ServiceUnderTest], within: float = 15) -> ServiceUnderTest:
    """The one replica that leads (fails if none, or two, claim it)."""

    async def one() -> ServiceUnderTest | None:
        flags = [await leading(s) for s in group]
        return group[flags.index(True)] if flags.count(True) == 1 else None

    return await eventually(one, timeout=within, interval=0.1, what="exactly one leader")


async def listen(bus: Any, pattern: str) -> list[dict[str, Any]]:
    """Every envelope published on ``pattern`` from now on, with its arrival time."""
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
    got: list[dict[str, Any]] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.append({**json.loads(message.body), "_at": time.monotonic()})
        await message.ack()

    await queue.consume(on_message)
    return got


async def test_fault_leader_killed_mid_stream_nothing_lost_nothing_twice(stack) -> None:
    n = 500
    group = replicas(stack, "fault")
    bus = await stack.bus()
    raised = await listen(bus, "fault.alarm.raised")
    cleared = await listen(bus, "fault.alarm.cleared")
    leader = await the_leader(group)
    standby = next(s for s in group if s is not leader)

    # (c) A write on the standby is relayed by the leader's relay (one shared outbox).
    async with standby.client(stack.tokens.admin) as http:
        posted = time.monotonic()
        r = await http.post(
            "/v1/alarms",
            json={
                "alarm_id": "100.104",
                "entity_instance_id": "host=standby-write",
                "severity": "major",
                "reason_text": "written on the standby",
            },
        )
        assert r.status_code in (200, 201), r.text
    seen = await eventually(
        lambda: [e for e in raised if e["subject"].endswith("host=standby-write")],
        timeout=10,
        what="the standby's event relayed",
    )
    relay_delay = seen[0]["_at"] - posted
    print(f"standby write -> event on the bus: {relay_delay * 1000:.0f} ms")
    assert relay_delay < 2.5

    # (a) A stream of sets; the leader is SIGKILLed once both replicas are consuming it.
    entities = [f"host=r{i:04d}" for i in range(n)]
    batch = [alarm(e) for e in entities]
    for start in range(0, n, 50):
        await bus.publish(batch[start : start + 50])
    async with leader.client(stack.tokens.reader) as http:

        async def under_way() -> bool:
            return len(await alarms(http, limit=1000)) >= 60

        await eventually(under_way, timeout=30, what="processing under way")
    split = []
    for svc in group:
        async with svc.client(None) as http:
            split.append(await metric(http, "roost_bus_consumed_total", outcome="processed"))
    print(
        f"consumed before the kill: leader {split[group.index(leader)]:.0f}, "
        f"standby {split[group.index(standby)]:.0f}"
    )
    killed_at = time.monotonic()
    leader.kill()  # mid-batch, mid-relay, its transactions open
    assert await the_leader([standby], within=10) is standby
    takeover = time.monotonic() - killed_at
    print(f"standby leads {takeover:.2f} s after the leader was killed")

    async with standby.client(stack.tokens.admin) as http:

        async def all_set() -> bool:
            listed = await alarms(http, limit=1000)
            return sum(a["entity_instance_id"].startswith("host=r") for a in listed) == n

        await eventually(all_set, timeout=60, what=f"{n} alarms after the kill")
        # Then clear every other one (after its set: a set and its clear on two consumers at
        # once could pass each other, as with any competing consumers).
        await bus.publish([clear(e) for e in entities[::2]])

        async def half_cleared() -> bool:
            listed = await alarms(http, limit=1000)
            return sum(a["entity_instance_id"].startswith("host=r") for a in listed) == n // 2

        await eventually(half_cleared, timeout=60, what="every other alarm cleared")
        active = {a["entity_instance_id"] for a in await alarms(http, limit=1000)}
        assert {e for e in entities if e in active} == set(entities[1::2])

        log = await events(http, alarms=True, limit=2000)
        records = Counter(
            (e["entity_instance_id"], e["state"])
            for e in log
            if e["entity_instance_id"].startswith("host=r")
        )
        assert len(records) == n + n // 2, "one set per alarm, one clear per cleared alarm"
        assert set(records.values()) == {1}, "each event logged exactly once"
        consumed = await metric(http, "roost_bus_consumed_total", outcome="processed")
        print(f"the survivor consumed {consumed:.0f} messages in all")
        assert consumed > split[group.index(standby)]  # it took over the killed one's share

    wanted = set(entities)

    async def every_event() -> bool:
        subjects = {e["subject"] for e in raised} & wanted
        gone = {e["subject"] for e in cleared} & wanted
        return len(subjects) == n and len(gone) == n // 2

    await eventually(every_event, timeout=30, what="every raised and cleared event on the bus")
    # Relayed at least once (a relay killed between publish and delete republishes the same
    # event id, which consumers drop); never two different events for one alarm change.
    for stream, expected in ((raised, entities), (cleared, entities[::2])):
        by_id = {e["id"]: e for e in stream}
        per_subject = Counter(e["subject"] for e in by_id.values() if e["subject"] in wanted)
        assert len(per_subject) == len(expected)
        assert set(per_subject.values()) == {1}, "one event per alarm change"


async def test_standby_takes_over_the_singleton_loops_on_a_clean_stop_at_once(stack) -> None:
    """A leader stopped cleanly releases its lease: the standby leads within one attempt."""
    group = replicas(stack, "fault")
    leader = await the_leader(group)
    standby = next(s for s in group if s is not leader)
    async with standby.client(None) as http:
        assert await metric(http, "roost_leader", service="fault") == 0
    stopped = time.monotonic()
    await asyncio.to_thread(leader.stop)
    assert await the_leader([standby], within=2.5) is standby  # released, not expired
    print(f"takeover after a clean stop: {time.monotonic() - stopped:.2f} s")
    async with standby.client(None) as http:
        assert await metric(http, "roost_leader", service="fault") == 1


@pytest.mark.slow
async def test_host_leader_killed_then_a_host_freezes_the_standby_detects_and_recovers_it(
    stack, tmp_path: Path
) -> None:
    """Two host replicas on one heartbeat port (only the leader binds it). The leader is
    SIGKILLed; the standby takes the lease and the port, and a host that freezes afterwards
    is still detected, fenced through its BMC and brought back; no healthy host is failed."""
    async with open_site(stack, tmp_path, 2) as site:
        first = site.host
        assert await leading(first)
        second = ServiceUnderTest(
            "host", dict(first.env), stack.workdir / "logs" / f"{first.env['ROOST_DATABASE']}-2.log"
        )
        stack.services.append(second)
        await asyncio.to_thread(second.start)
        assert not await leading(second)  # a standby: it serves, binds no heartbeat port

        killed_at = time.monotonic()
        first.kill()
        assert await the_leader([second], within=10) is second
        print(f"host standby leads {time.monotonic() - killed_at:.2f} s after the kill")
        async with second.client(stack.tokens.admin) as http:

            async def hearing() -> bool:
                return await metric(http, "roost_heartbeats_received_total", path="udp") > 0

            await eventually(hearing, timeout=10, what="the new leader hears UDP heartbeats")
            frozen_at = time.monotonic()
            os.kill(site.agent_pid("worker-0"), signal.SIGSTOP)
            await where(http, "worker-0", lambda d: d["availability"] == "failed", "failed", 10)
            print(f"frozen host failed after {time.monotonic() - frozen_at:.2f} s")
            await where(
                http, "worker-0", lambda d: d["availability"] == "available", "recovered", 60
            )
            timeline = (
                await http.get("/v1/hosts/worker-0/timeline", params={"limit": 1000})
            ).json()["timeline"]
            reasons = [e["reason"] for e in timeline]
            assert "recovery-fenced" in reasons and "recovery-power-on" in reasons, reasons
            # The controller, heartbeating all along, was never failed across the takeover.
            c0 = (await http.get("/v1/hosts/controller-0")).json()
            assert c0["availability"] == "available"
            c0_reasons = [
                e["reason"]
                for e in (await http.get("/v1/hosts/controller-0/timeline")).json()["timeline"]
            ]
            assert not [r for r in c0_reasons if r.startswith("heartbeat-lost")], c0_reasons
