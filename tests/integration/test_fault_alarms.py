"""Alarms through the bus and the API: raise, update, clear, suppress, summarise, page, filter."""

from __future__ import annotations

from tests.support.fault import alarm, alarms, clear, events, log
from tests.support.waiting import eventually


async def test_raise_twice_updates_one_alarm_then_clear_removes_and_logs(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    async with fault.client(stack.tokens.reader) as http:
        await bus.publish([alarm("host=w1", severity="major")])
        first = (await eventually(lambda: alarms(http), what="alarm raised"))[0]
        assert first["severity"] == "major" and first["mgmt_affecting"] == "False"

        await bus.publish([alarm("host=w1", severity="critical", reason_text="worse")])

        async def updated():
            found = await alarms(http, expand=True)
            return found if found and found[0]["severity"] == "critical" else None

        [second] = await eventually(updated, what="alarm updated")
        assert second["uuid"] == first["uuid"], "raising again must update, not duplicate"
        assert second["reason_text"] == "worse" and second["alarm_state"] == "set"

        await bus.publish([clear("host=w1")])

        async def cleared():
            return not await alarms(http)

        await eventually(cleared, what="alarm cleared")
        history = await events(http, alarms=True, expand=True)
        assert [e["state"] for e in history] == ["clear", "set", "set"]  # newest first
        assert all(e["event_log_id"] == "100.101" for e in history)
        show = await http.get(f"/v1/alarms/{first['uuid']}")
        assert show.status_code == 404


async def test_clear_without_alarm_id_clears_all_of_entity_and_logs_are_not_alarms(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    async with fault.client(stack.tokens.reader) as http:
        await bus.publish(
            [
                alarm("host=a", "100.101"),
                alarm("host=a", "100.103"),
                alarm("host=b", "100.101"),
                log("host=a"),
            ]
        )
        await eventually(lambda: _count(http, 3), what="3 alarms")
        await bus.publish([clear("host=a", alarm_id=None)])
        remaining = await eventually(lambda: _count(http, 1), what="entity cleared")
        assert [a["entity_instance_id"] for a in remaining] == ["host=b"]
        logs = await events(http, logs=True)
        assert [(e["state"], e["event_log_id"]) for e in logs] == [("log", "200.021")]
        assert all(e["state"] in ("set", "clear") for e in await events(http, alarms=True))


async def _count(http, n):
    found = await alarms(http)
    return found if len(found) == n else None


async def test_same_event_delivered_twice_takes_effect_once(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    event = alarm("host=dup")
    await bus.publish([event])
    await bus.publish([event])  # a producer retry: same event id
    await bus.publish([log("host=marker")])
    async with fault.client(stack.tokens.reader) as http:
        await eventually(lambda: events(http, logs=True), what="marker processed")
        sets = await events(http, alarms=True)
        assert len(sets) == 1, "a redelivered event must not be logged twice"


async def test_suppression_hides_alarm_from_default_list_and_summary_counts_it_apart(stack):
    fault = stack.start("fault")
    async with fault.client(stack.tokens.admin) as http:
        for entity, severity in (("host=s1", "critical"), ("host=s2", "minor")):
            r = await http.post(
                "/v1/alarms",
                json={
                    "alarm_id": "100.101" if entity == "host=s1" else "100.103",
                    "entity_instance_id": entity,
                    "severity": severity,
                    "reason_text": "x",
                },
            )
            assert r.status_code == 201
        summary = (await http.get("/v1/alarms/summary")).json()
        assert (summary["critical"], summary["minor"], summary["status"]) == (1, 1, "critical")

        entries = (
            await http.get(
                "/v1/event_suppression",
                params={"q.field": "alarm_id", "q.op": "eq", "q.value": "100.101"},
            )
        ).json()
        [entry] = entries["event_suppression"]
        patch = [{"path": "/suppression_status", "value": "suppressed", "op": "replace"}] * 2
        r = await http.patch(f"/v1/event_suppression/{entry['uuid']}", json=patch)
        assert r.status_code == 200 and r.json()["suppression_status"] == "suppressed"

        shown = await alarms(http)
        assert [a["alarm_id"] for a in shown] == ["100.103"]
        everything = await alarms(http, include_suppress=True)
        hidden = [a for a in everything if a["alarm_id"] == "100.101"]
        assert hidden and hidden[0]["suppression_status"] == "suppressed"
        summary = (await http.get("/v1/alarms/summary")).json()
        assert (summary["critical"], summary["status"]) == (0, "degraded")
        assert summary["suppressed"]["critical"] == 1
        assert all(e["event_log_id"] != "100.101" for e in await events(http))
        assert any(
            e["event_log_id"] == "100.101" for e in await events(http, include_suppress=True)
        )

        r = await http.patch(
            f"/v1/event_suppression/{entry['uuid']}",
            json=[{"path": "/suppression_status", "value": "unsuppressed"}],
        )
        assert r.status_code == 200
        assert len(await alarms(http)) == 2


async def test_paging_follows_markers_in_fm_order_and_filters_by_q(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    severities = ["warning", "minor", "major", "critical"]
    await bus.publish([alarm(f"host=p{i:02d}", severity=severities[i % 4]) for i in range(25)])
    async with fault.client(stack.tokens.reader) as http:
        await eventually(lambda: _count(http, 25), what="25 alarms")
        seen: list[dict] = []
        url, params = "/v1/alarms", {"limit": 10}
        while True:
            body = (await http.get(url, params=params)).json()
            seen.extend(body["alarms"])
            if "next" not in body:
                break
            assert "limit=10" in body["next"] and "marker=" in body["next"]
            url, params = body["next"], None
        assert len(seen) == 25 and len({a["uuid"] for a in seen}) == 25
        ranks = [severities[::-1].index(a["severity"]) for a in seen]
        assert ranks == sorted(ranks), "most severe first"

        q = {
            "q.field": ["severity", "entity_instance_id"],
            "q.op": ["eq", "eq"],
            "q.type": ["", ""],
            "q.value": ["critical", "host=p0"],
        }
        found = await alarms(http, **q)
        assert sorted(a["entity_instance_id"] for a in found) == ["host=p03", "host=p07"]

        # Following ``next`` as given keeps the filter and the expanded form.
        body = (
            await http.get(
                "/v1/alarms",
                params={**q, "q.value": ["major", "host=p"], "limit": 3, "expand": True},
            )
        ).json()
        page2 = (await http.get(body["next"])).json()["alarms"]
        assert page2 and all(a["severity"] == "major" and "alarm_type" in a for a in page2)
        got = {a["entity_instance_id"] for a in body["alarms"] + page2}
        assert got == {f"host=p{i:02d}" for i in range(25) if i % 4 == 2}

        r = await http.get("/v1/alarms", params={"q.field": "colour", "q.value": "red"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "q.field"
        r = await http.get("/v1/alarms", params={"marker": "no-such-uuid"})
        assert r.status_code == 404


async def test_event_log_time_window(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    await bus.publish([log("host=t1")])
    async with fault.client(stack.tokens.reader) as http:
        [entry] = await eventually(lambda: events(http), what="log written")
        stamp = entry["timestamp"]
        inside = await events(
            http, **{"q.field": ["start", "end"], "q.op": ["eq", "eq"], "q.value": [stamp, stamp]}
        )
        assert [e["uuid"] for e in inside] == [entry["uuid"]]
        later = await events(http, **{"q.field": "start", "q.value": "2999-01-01T00:00:00"})
        assert later == []
        bad = await http.get("/v1/event_log", params={"q.field": "start", "q.value": "soon"})
        assert bad.status_code == 422 and "soon" in bad.json()["detail"]


async def test_event_log_retention_drops_oldest_first(stack):
    fault = stack.start("fault", ROOST_EVENT_LOG_MAX_COUNT="100", ROOST_RETENTION_PERIOD_S="0.2")
    bus = await stack.bus()
    await bus.publish([log(f"host=r{i:03d}") for i in range(150)])
    async with fault.client(stack.tokens.reader) as http:

        async def pruned():
            kept = await events(http, logs=True)
            return (
                kept if len(kept) == 100 and kept[0]["entity_instance_id"] == "host=r149" else None
            )

        kept = await eventually(pruned, timeout=20, what="retention to 100 records")
        entities = {e["entity_instance_id"] for e in kept}
        assert "host=r149" in entities and "host=r000" not in entities
        metrics = (await http.get("/metrics")).text
        assert 'roost_fault_event_log_pruned_total{reason="count"} 50.0' in metrics


async def test_api_raise_and_delete_are_logged_like_bus_events(stack):
    fault = stack.start("fault")
    async with fault.client(stack.tokens.admin) as http:
        body = {
            "alarm_id": "200.010",
            "entity_instance_id": "host=bmc1",
            "severity": "minor",
            "reason_text": "BMC unreachable",
            "mgmt_affecting": True,
        }
        created = (await http.post("/v1/alarms", json=body)).json()
        assert created["mgmt_affecting"] == "True" and created["alarm_state"] == "set"
        assert (await http.delete(f"/v1/alarms/{created['uuid']}")).status_code == 204
        assert (await http.delete(f"/v1/alarms/{created['uuid']}")).status_code == 404
        states = [e["state"] for e in await events(http, alarms=True)]
        assert states == ["clear", "set"]
        r = await http.post(
            "/v1/event_log",
            json={
                "event_log_id": "900.001",
                "entity_instance_id": "system=roost",
                "reason_text": "patch applied",
            },
        )
        assert r.status_code == 201 and r.json()["state"] == "log"
