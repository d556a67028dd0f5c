"""Bad input gets a clear error and nothing is lost: API problems, auth, poison messages."""

from __future__ import annotations

import json

from aio_pika import DeliveryMode, Message

from roost_shared.bus import EVENTS_EXCHANGE
from tests.support.fault import alarm, alarms, metric
from tests.support.waiting import eventually

GOOD = {
    "alarm_id": "100.101",
    "entity_instance_id": "host=x",
    "severity": "major",
    "reason_text": "r",
}


async def test_invalid_bodies_get_422_problem_json_naming_the_field(stack):
    fault = stack.start("fault")
    async with fault.client(stack.tokens.admin) as http:
        r = await http.post("/v1/alarms", json={**GOOD, "severity": "apocalyptic"})
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == 422 and body["errors"][0]["field"] == "body.severity"
        assert "body.severity" in body["detail"]
        # StarlingX clients read error_message.faultstring (first key).
        assert next(iter(body)) == "error_message"
        assert body["error_message"]["faultstring"] == body["detail"]

        for field, value in (
            ("alarm_id", "not-an-id"),
            ("entity_instance_id", "bad id!"),
            ("reason_text", ""),
        ):
            r = await http.post("/v1/alarms", json={**GOOD, field: value})
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == f"body.{field}"
        r = await http.post("/v1/alarms", json={**GOOD, "colour": "red"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.colour"
        r = await http.post(
            "/v1/alarms", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
        r = await http.get("/v1/alarms", params={"limit": -1})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.limit"
        r = await http.patch(
            "/v1/event_suppression/nope",
            json=[{"path": "/alarm_id", "value": "1", "op": "replace"}],
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.0.path"
        r = await http.post("/v1/subscriptions", json={"url": "not a url"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.url"

        for path in (
            "/v1/alarms/nope",
            "/v1/event_log/nope",
            "/v1/event_suppression/nope",
            "/v1/subscriptions/nope",
            "/v1/dead-letters/nope",
        ):
            r = await http.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"
            assert "nope" in r.json()["detail"]
        assert (await http.delete("/v1/alarms/nope")).status_code == 404


async def test_tokens_and_roles(stack):
    fault = stack.start("fault")
    async with fault.client(None) as anon:
        r = await anon.get("/v1/alarms")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "missing token" in r.json()["detail"]
        r = await anon.get("/v1/alarms", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "invalid token" in r.json()["detail"]
        # OpenStack/StarlingX clients send X-Auth-Token.
        r = await anon.get("/v1/alarms", headers={"X-Auth-Token": stack.tokens.reader})
        assert r.status_code == 200
        # Health and readiness answer without a token (probes).
        assert (await anon.get("/healthz")).status_code == 200
        checks = (await anon.get("/readyz")).json()["checks"]
        assert checks["database"] and checks["bus"], checks  # no token needed
    async with fault.client(stack.tokens.reader) as reader:
        r = await reader.post("/v1/alarms", json=GOOD)
        assert r.status_code == 403 and "admin" in r.json()["detail"]
        assert (await reader.delete("/v1/subscriptions/x")).status_code == 403
        assert (await reader.get("/v1/alarms")).status_code == 200


async def test_malformed_bus_messages_are_parked_counted_and_replayable(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    exchange = bus.exchanges[EVENTS_EXCHANGE]
    await exchange.publish(
        Message(
            b"{this is not json", delivery_mode=DeliveryMode.PERSISTENT, message_id="garbage-1"
        ),
        routing_key="fault.alarm.set",
    )
    bad = alarm("host=bad").model_dump(mode="json")
    bad["data"]["severity"] = "apocalyptic"
    await exchange.publish(
        Message(
            json.dumps(bad).encode(), message_id=bad["id"], delivery_mode=DeliveryMode.PERSISTENT
        ),
        routing_key="fault.alarm.set",
    )
    await bus.publish([alarm("host=good")])  # the service keeps working behind them

    async with fault.client(stack.tokens.admin) as http:
        [good] = await eventually(lambda: alarms(http), what="good alarm processed")
        assert good["entity_instance_id"] == "host=good"

        async def parked():
            body = (await http.get("/v1/dead-letters")).json()["dead_letters"]
            return body if len(body) == 2 else None

        letters = await eventually(parked, what="2 dead letters")
        reasons = {d["message_id"]: d["reason"] for d in letters}
        assert reasons["garbage-1"].startswith("malformed")
        assert "severity" in reasons[bad["id"]]
        assert all(d["queue"] == "fault.commands" for d in letters)
        assert (
            await metric(
                http, "roost_bus_dead_lettered_total", queue="fault.commands", reason="malformed"
            )
            == 2
        )

        # Replay puts it back on its queue; still malformed, so it is parked again, not lost.
        garbage = next(d for d in letters if d["message_id"] == "garbage-1")
        r = await http.post(f"/v1/dead-letters/{garbage['id']}/replay")
        assert r.status_code == 200

        async def reparked():
            body = (await http.get("/v1/dead-letters")).json()["dead_letters"]
            ids = [d["message_id"] for d in body]
            return (
                body
                if ids.count("garbage-1") == 1 and garbage["id"] not in {d["id"] for d in body}
                else None
            )

        await eventually(reparked, what="replayed message parked again")
        assert (
            await metric(
                http, "roost_bus_dead_lettered_total", queue="fault.commands", reason="malformed"
            )
            == 3
        )
        # An operator can discard it.
        body = (await http.get("/v1/dead-letters")).json()["dead_letters"]
        for d in body:
            assert (await http.delete(f"/v1/dead-letters/{d['id']}")).status_code == 204
        assert (await http.get("/v1/dead-letters")).json()["dead_letters"] == []
