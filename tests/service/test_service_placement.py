"""Placement, activity and failover of the service service as a real process, with fake agents
on the bus: active to the preferred host with the lease's fencing token, standby elsewhere;
failover on a failed instance (bigger token) and on a failed host (only after the lease
expired); swact exactly once, refused without a healthy standby; no placement on unknown or
locked hosts. The instances API is read continuously: never two ``enabled-active``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from tests.service.fake_agent import FakeAgent
from tests.service.placing import (
    HOSTS,
    IN_SERVICE,
    active_on,
    group,
    hosts_known,
    instances,
    learn,
    placed,
    roles,
    set_state,
    until_state,
    watching,
)
from tests.service.test_service_api import Listener
from tests.support.waiting import eventually


async def test_placement_then_failover_on_failed_instance(stack):
    svc, bus, agents = await placed(stack)
    alarms = await Listener.on(bus, "fault.alarm.*")
    c0, c1 = agents["controller-0"], agents["controller-1"]
    async with svc.client(stack.tokens.admin) as http:
        await eventually(
            lambda: hosts_known(http), timeout=10, what="hosts learnt (a group to place)"
        )
        assert (await http.put("/v1/service-groups/gw", json=group())).status_code == 201
        async with watching(http, "gw") as watch:
            body = await until_state(http, "active")
            # Active on the preferred host with the lease's token, services in start order.
            assert body["active_host"] == "controller-1"
            first = [c["data"] for c in c1.assigns("active")]
            assert [a["service"] for a in first] == ["db", "api"]
            lease = (await http.get("/v1/service-groups/gw/leases")).json()["leases"][0]
            assert lease["holder"] == "controller-1"
            assert {a["fencing_token"] for a in first} == {lease["token"]}
            assert first[0]["spec"]["argv"] == ["/usr/bin/db", "--data", "/var/db"]
            assert first[0]["spec"]["fencing_token"] == lease["token"]
            assert first[0]["spec"]["restart"]["max_restarts"] == 2
            standby = [c["data"] for c in c0.assigns()]
            assert [(a["service"], a["role"], a.get("fencing_token")) for a in standby] == [
                ("db", "standby", None),
                ("api", "standby", None),
            ]
            assert roles(body)[("controller-1", "api")] == ("active", "enabled-active")
            assert roles(body)[("controller-0", "db")] == ("standby", "enabled-standby")
            assert (await http.get("/v1/service-groups/gw")).json()["state"] == "active"

            # The active db exhausts its restarts: the standby takes over with a bigger token.
            await c1.report("gw.db.controller-1", "failed", "restarts exhausted")
            body = await eventually(
                lambda: active_on(http, "controller-0"), timeout=10, what="failover"
            )
            new = [c["data"] for c in c0.assigns("active")]
            assert len(new) == 2 and {a["fencing_token"] for a in new} == {lease["token"] + 1}
            # The old active is told to be standby (token None), and becomes it.
            assert [c["data"]["role"] for c in c1.assigns()][-2:] == ["standby", "standby"]
            await until_state(http, "active")
        assert watch.actives[-2:] == ["controller-1", "controller-0"] or watch.actives[-3:] == [
            "controller-1",
            None,
            "controller-0",
        ]
    # Going through a moment without an active may raise 400.001/400.002 for gw, nothing else.
    # (The scratch group "probe" that hosts_known declares raises its own while the service
    # does not know the hosts yet: not counted.)
    mine = [e for e in alarms.got if e["data"]["entity_instance_id"] != "service_group=probe"]
    assert all(e["data"]["entity_instance_id"] == "service_group=gw" for e in mine), mine
    assert {e["data"]["alarm_id"] for e in mine if e["type"] == "fault.alarm.set"} <= {
        "400.001",
        "400.002",
    }


async def test_degrade_policy_keeps_the_group_active_and_retries_after_the_window(stack):
    svc, bus, agents = await placed(stack)
    changes = await Listener.on(bus, "service.group.changed")
    c0, c1 = agents["controller-0"], agents["controller-1"]
    policy = {"max_restarts": 2, "window_s": 1, "on_exhausted": "degrade"}
    async with svc.client(stack.tokens.admin) as http:
        await eventually(lambda: hosts_known(http), timeout=10, what="hosts learnt")
        r = await http.put("/v1/service-groups/gw", json=group(failure_policy=policy))
        assert r.status_code == 201, r.text
        await until_state(http, "active")
        token = (await instances(http))["instances"][0]["token"] or 0
        before = len(c1.assigns("active"))
        # The active's api gives up: no failover, the group is degraded where it is.
        await c1.report("gw.api.controller-1", "failed", "restarts exhausted")
        body = await until_state(http, "degraded")
        assert body["active_host"] == "controller-1"
        assert "without api" in body["state_reason"] and "degrade" in body["state_reason"]
        assert not c0.assigns("active"), "no failover under on_exhausted: degrade"
        # After window_s it is started again, same role and token: the group is whole again.
        await eventually(
            lambda: len(c1.assigns("active")) > before, timeout=10, what="a retry of api"
        )
        retry = c1.assigns("active")[-1]["data"]
        assert (retry["service"], retry["fencing_token"]) == ("api", max(token, 1))
        await until_state(http, "active")

    # Every state transition of gw was announced (service.group.changed), in order. (The
    # scratch group "probe" that hosts_known declares announces its own: not counted.)
    def of_gw() -> list[dict]:
        return [e["data"] for e in changes.of("service.group.changed") if e["data"]["name"] == "gw"]

    await eventually(
        lambda: [d["to_state"] for d in of_gw()][-1:] == ["active"],
        what="the last transition announced",
    )
    states = [d["to_state"] for d in of_gw()]
    assert "degraded" in states and states.index("degraded") < len(states) - 1, states
    degraded = next(d for d in of_gw() if d["to_state"] == "degraded")
    assert degraded["active_hosts"] == ["controller-1"] and "without api" in degraded["reason"]


async def test_host_failure_takes_over_only_after_lease_expiry(stack):
    svc, bus, agents = await placed(stack)
    async with svc.client(stack.tokens.admin) as http:
        await eventually(lambda: hosts_known(http), timeout=10, what="hosts learnt")
        assert (await http.put("/v1/service-groups/gw", json=group())).status_code == 201
        async with watching(http, "gw"):
            await until_state(http, "active")
            agents["controller-1"].frozen = True
            await set_state(bus, "controller-1", "unlocked", "disabled", "failed")
            # Renewal stops with the failure; the last renewal's expiry bounds the takeover.
            body = await eventually(
                lambda: _state_is(http, "failed"), timeout=5, what="active host failed"
            )
            assert "expires at" in body["state_reason"], body
            lease = (await http.get("/v1/service-groups/gw/leases")).json()["leases"][0]
            expires = datetime.fromisoformat(lease["expires_at"]).replace(tzinfo=UTC)
            await eventually(lambda: active_on(http, "controller-0"), timeout=10, what="takeover")
            taken = agents["controller-0"].assigns("active")
            assert len(taken) == 2
            assert {c["data"]["fencing_token"] for c in taken} == {lease["token"] + 1}
            assert min(c["received_at"] for c in taken) >= expires.timestamp()
            body = await until_state(http, "degraded")
            assert roles(body)[("controller-1", "db")] == (None, "failed")


async def test_swact_switches_once_and_is_refused_without_standby(stack):
    svc, bus, agents = await placed(stack)
    alarms = await Listener.on(bus, "fault.alarm.*")
    c0, c1 = agents["controller-0"], agents["controller-1"]
    async with (
        svc.client(stack.tokens.admin) as http,
        svc.client(stack.tokens.reader) as ro,
    ):
        await eventually(lambda: hosts_known(http), timeout=10, what="hosts learnt")
        assert (await http.put("/v1/service-groups/gw", json=group())).status_code == 201
        async with watching(http, "gw") as watch:
            await until_state(http, "active")
            assert (await ro.post("/v1/service-groups/gw/swact")).status_code == 403
            token = (await http.get("/v1/service-groups/gw/leases")).json()["leases"][0]["token"]
            r = await http.post("/v1/service-groups/gw/swact")
            assert r.status_code == 200, r.text
            await eventually(lambda: active_on(http, "controller-0"), timeout=10, what="swact")
            await until_state(http, "active")
            assert len(c0.assigns("active")) == 2  # db, api: one switch
            assert {c["data"]["fencing_token"] for c in c0.assigns("active")} == {token + 1}
            assert len(c1.assigns("active")) == 2  # only the first placement
            lease = (await http.get("/v1/service-groups/gw/leases")).json()["leases"][0]
            assert lease["holder"] == "controller-0" and lease["token"] == token + 1

            # The standby (now controller-1) fails: no healthy standby, swact refused.
            await c1.report("gw.db.controller-1", "failed", "restarts exhausted")
            body = await until_state(http, "degraded")
            assert "no healthy standby" in body["state_reason"]
            r = await http.post("/v1/service-groups/gw/swact")
            assert r.status_code == 409 and "no healthy standby" in r.json()["detail"], r.text
        assert [a for a in watch.actives if a] == ["controller-1", "controller-0"]
    await eventually(
        lambda: _alarm(alarms, "400.002"), timeout=10, what="400.002 loss of redundancy"
    )


async def test_unknown_or_locked_hosts_are_not_placed(stack):
    svc = stack.start("service")
    bus = await stack.bus()
    agents = {h: await FakeAgent(bus, h, mac).start() for h, mac in HOSTS.items()}
    await learn(bus, "controller-0", ("locked", "disabled", "online"))
    alarms = await Listener.on(bus, "fault.alarm.*")
    async with svc.client(stack.tokens.admin) as http:
        await eventually(lambda: hosts_known(http, 1), timeout=10, what="host learnt")
        assert (await http.put("/v1/service-groups/gw", json=group())).status_code == 201
        body = await until_state(http, "failed")
        reason = body["state_reason"]
        assert "controller-0 is locked-disabled-online" in reason, reason
        assert "controller-1 is unknown" in reason, reason
        assert {i["state"] for i in body["instances"]} == {"disabled"}
        assert (await http.get("/v1/service-groups/gw")).json()["state"] == "failed"
        r = await http.post("/v1/service-groups/gw/swact")
        assert r.status_code == 409
        await eventually(lambda: _alarm(alarms, "400.001"), timeout=10, what="400.001")
    assert all(not a.assigns() for a in agents.values())


async def _state_is(http: httpx.AsyncClient, state: str) -> dict | None:
    body = await instances(http)
    return body if body["state"] == state else None


async def _alarm(listener: Listener, alarm_id: str) -> bool:
    """Whether ``alarm_id`` was raised for group gw (not for hosts_known's scratch group)."""
    return any(
        e["data"]["alarm_id"] == alarm_id and e["data"]["entity_instance_id"] == "service_group=gw"
        for e in listener.of("fault.alarm.set")
    )


async def test_n_plus_m_keeps_n_active_and_fills_a_slot_from_the_standby(stack):
    """2+1 on three hosts: two slots, each with its own lease and fencing token, one standby;
    a failed instance or host gives its slot to the standby; never more than N actives."""
    svc, bus, agents = await placed(stack, ROOST_ACTIVITY_TTL_S="1")
    third = await FakeAgent(bus, "controller-2", "52:54:00:00:00:12").start()
    await learn(bus, "controller-2", IN_SERVICE, mac=third.mac)
    c0, c1 = agents["controller-0"], agents["controller-1"]
    declared = group(
        redundancy={"model": "n-plus-m", "active": 2, "standby": 1},
        members={"hosts": ["controller-0", "controller-1", "controller-2"]},
        preferred=["controller-0", "controller-1"],
    )
    peak: list[int] = []

    async def count_actives() -> None:
        while True:
            body = await instances(http)
            active = {i["host"] for i in body["instances"] if i["state"] == "enabled-active"}
            peak.append(len(active))
            await asyncio.sleep(0.01)

    async with svc.client(stack.tokens.admin) as http:
        three = ("controller-0", "controller-1", "controller-2")
        await eventually(lambda: hosts_known(http, 3, three), timeout=10, what="hosts learnt")
        assert (await http.put("/v1/service-groups/gw", json=declared)).status_code == 201
        watcher = asyncio.create_task(count_actives())
        try:
            body = await until_state(http, "active")
            assert sorted(body["active_hosts"]) == ["controller-0", "controller-1"]
            leases = {
                lease["slot"]: lease
                for lease in (await http.get("/v1/service-groups/gw/leases")).json()["leases"]
            }
            holders = {lease["holder"] for lease in leases.values()}
            assert holders == {"controller-0", "controller-1"}
            standby = [c["data"] for c in third.assigns()]
            assert {a["role"] for a in standby} == {"standby"}
            slot_of_c0 = next(s for s, lease in leases.items() if lease["holder"] == "controller-0")

            # c0's db gives up: its slot goes to the standby with that slot's token + 1.
            await c0.report("gw.db.controller-0", "failed", "restarts exhausted")
            body = await eventually(
                lambda: _state_with(http, "active", "controller-2"), timeout=10, what="c2 active"
            )
            assert sorted(body["active_hosts"]) == ["controller-1", "controller-2"]
            new = (await http.get("/v1/service-groups/gw/leases")).json()["leases"]
            moved = next(lease for lease in new if lease["slot"] == slot_of_c0)
            assert moved["holder"] == "controller-2"
            assert moved["token"] == leases[slot_of_c0]["token"] + 1
            assert {a["data"]["fencing_token"] for a in third.assigns("active")} == {moved["token"]}

            # controller-1's host fails: its slot is taken once the lease expired, by the
            # standby (controller-0 again, given a fresh standby role meanwhile).
            await set_state(bus, "controller-1", "unlocked", "disabled", "failed")
            body = await eventually(
                lambda: _state_with(http, "degraded", "controller-0", "no healthy standby"),
                timeout=10,
                what="controller-0 active in controller-1's slot, no standby left",
            )
            assert sorted(body["active_hosts"]) == ["controller-0", "controller-2"]
        finally:
            watcher.cancel()
    assert peak and max(peak) <= 2, f"more than N=2 actives seen: {max(peak)}"
    assert c1.assigns("active"), "controller-1 was active before its host failed"


async def _state_with(
    http: httpx.AsyncClient, state: str, active: str, reason: str = ""
) -> dict | None:
    body = await instances(http)
    ok = body["state"] == state and active in body["active_hosts"]
    return body if ok and reason in body["state_reason"] else None
