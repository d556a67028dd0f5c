"""Webhook delivery survives its own workers dying, and a receiver that never answers cannot
grow the notification log without bound."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from roost_sim.ports import free_port
from tests.support.fault import alarm
from tests.support.receiver import WebhookReceiver
from tests.support.waiting import eventually


async def _subscribe(http, url: str) -> str:
    r = await http.post("/v1/subscriptions", json={"url": url})
    assert r.status_code == 201, r.text
    return r.json()["uuid"]


async def test_a_delivery_worker_that_dies_is_restarted_and_logged(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    db = AsyncMongoClient(stack.mongo_url)[fault.env["ROOST_DATABASE"]]
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    try:
        async with fault.client(stack.tokens.admin) as http:
            sub = await _subscribe(http, receiver.url)
            await bus.publish([alarm("host=w1")])
            await eventually(lambda: len(receiver.unique()) == 1, what="the first notification")

            # A subscription document the worker cannot use (as a bug or a bad migration
            # would leave it): matching a notification against it raises, killing the worker.
            await db.subscriptions.update_one({"_id": sub}, {"$set": {"alarm_id_prefixes": [5]}})
            await bus.publish([alarm("host=w2")])
            await eventually(
                lambda: "delivery worker died" in fault.log_path.read_text(),
                timeout=20,
                what="the worker's death logged",
            )
            await db.subscriptions.update_one({"_id": sub}, {"$set": {"alarm_id_prefixes": []}})
            await eventually(
                lambda: len(receiver.unique()) == 2, timeout=30, what="delivery resumed"
            )
            metrics = (await http.get("/metrics")).text
            restarts = [
                line
                for line in metrics.splitlines()
                if line.startswith("roost_webhook_worker_restarts_total")
            ]
            assert restarts and float(restarts[0].split()[-1]) >= 1, restarts
            assert "TypeError" in fault.log_path.read_text()  # with what killed it
    finally:
        await receiver.stop()
        await db.client.close()


async def test_a_receiver_that_never_answers_cannot_grow_the_notification_log(stack):
    fault = stack.start("fault", ROOST_WEBHOOK_BACKLOG_MAX="5", ROOST_RETENTION_PERIOD_S="0.2")
    bus = await stack.bus()
    db = AsyncMongoClient(stack.mongo_url)[fault.env["ROOST_DATABASE"]]
    receiver = WebhookReceiver(free_port())  # down
    try:
        async with fault.client(stack.tokens.admin) as http:
            sub = await _subscribe(http, receiver.url)
            entities = [f"host=b{i:02d}" for i in range(30)]
            await bus.publish([alarm(e) for e in entities])

            async def capped():
                view = (await http.get(f"/v1/subscriptions/{sub}")).json()
                kept = await db.notifications.count_documents({})
                ok = view["dropped"] == 25 and view["pending"] == 5 and kept <= 5
                return (view, kept) if ok else None

            view, _ = await eventually(
                capped, timeout=40, what="25 dropped and at most 5 notifications kept"
            )
            assert view["state"] == "retrying"
            metrics = (await http.get("/metrics")).text
            assert 'roost_webhook_notifications_total{outcome="dropped"} 25.0' in metrics

            # When the receiver returns it gets the newest five, in order.
            await receiver.start()
            await eventually(lambda: len(receiver.unique()) == 5, timeout=20, what="5 delivered")
            got = [n["alarm"]["entity_instance_id"] for n in receiver.unique().values()]
            assert got == entities[-5:]
    finally:
        await receiver.stop()
        await db.client.close()
