"""Webhook subscriptions: at-least-once, in order per entity, nothing lost while the receiver
is down."""

from __future__ import annotations

from collections import defaultdict

from pymongo import AsyncMongoClient

from roost_sim.ports import free_port
from tests.support.fault import alarm, clear
from tests.support.receiver import WebhookReceiver
from tests.support.waiting import eventually


async def _subscribe(http, url, **filters):
    r = await http.post("/v1/subscriptions", json={"url": url, **filters})
    assert r.status_code == 201, r.text
    return r.json()["uuid"]


async def test_receiver_down_for_a_while_gets_everything_in_order_per_entity(stack):
    fault = stack.start("fault", ROOST_RETENTION_PERIOD_S="0.2")
    bus = await stack.bus()
    receiver = WebhookReceiver(free_port())
    async with fault.client(stack.tokens.admin) as http:
        sub = await _subscribe(http, receiver.url)
        # The receiver is down: notifications must wait, not be dropped.
        script = []
        for i in range(5):
            entity = f"host=h{i}"
            script += [
                alarm(entity, severity="minor"),
                alarm(entity, severity="critical"),
                clear(entity),
            ]
        for envelope in script:
            await bus.publish([envelope])

        async def failing():
            view = (await http.get(f"/v1/subscriptions/{sub}")).json()
            return view if view["state"] == "retrying" and view["pending"] == 15 else None

        view = await eventually(failing, what="subscription retrying with 15 pending")
        assert view["attempts"] >= 1 and view["last_error"]

        await receiver.start()
        try:
            await eventually(lambda: _got(receiver, 15), timeout=20, what="15 notifications")
            by_entity = defaultdict(list)
            for n in receiver.unique().values():
                by_entity[n["alarm"]["entity_instance_id"]].append(n)
            for entity in by_entity:
                ordered = [
                    n for n in receiver.received if n["alarm"]["entity_instance_id"] == entity
                ]
                assert [n["type"] for n in ordered] == [
                    "fault.alarm.raised",
                    "fault.alarm.changed",
                    "fault.alarm.cleared",
                ], entity
                assert ordered[1]["alarm"]["previous_severity"] == "minor"
            assert len(by_entity) == 5

            async def healthy():
                v = (await http.get(f"/v1/subscriptions/{sub}")).json()
                return v if v["state"] == "ok" and v["pending"] == 0 else None

            view = await eventually(healthy, what="subscription healthy")
            assert view["delivered"] == 15 and view["last_error"] is None

            # What every subscriber has received is dropped from the notification log.
            db = AsyncMongoClient(stack.mongo_url)[fault.env["ROOST_DATABASE"]]

            async def pruned():
                return await db.notifications.count_documents({}) == 0

            await eventually(pruned, what="delivered notifications pruned")
            await db.client.close()
        finally:
            await receiver.stop()


async def _got(receiver, n):
    return len(receiver.unique()) >= n


async def test_subscription_filters_and_delete(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    try:
        async with fault.client(stack.tokens.admin) as http:
            sub = await _subscribe(
                http, receiver.url, severities=["critical"], alarm_id_prefixes=["200."]
            )
            await bus.publish(
                [
                    alarm("host=f1", "200.005", "critical"),
                    alarm("host=f2", "200.005", "minor"),
                    alarm("host=f3", "100.101", "critical"),
                    alarm("host=f4", "200.010", "critical"),
                ]
            )
            await eventually(lambda: _got(receiver, 2), what="2 matching notifications")

            # Everything published before f4 is in the same or earlier batch; wait for all four.
            async def processed():
                r = await http.get("/v1/alarms")
                return len(r.json()["alarms"]) == 4

            await eventually(processed, what="all processed")
            got = sorted(n["alarm"]["entity_instance_id"] for n in receiver.unique().values())
            assert got == ["host=f1", "host=f4"]

            assert (await http.delete(f"/v1/subscriptions/{sub}")).status_code == 204
            listed = (await http.get("/v1/subscriptions")).json()["subscriptions"]
            assert listed == []
    finally:
        await receiver.stop()
