"""The host service as a real process: learning hosts from config events, actions through the
API, the timeline, ``host.state.changed`` and 200.001 on the bus, restarts, and the config
service's delete guard."""

from __future__ import annotations

import json
import uuid
from typing import Any

from roost_shared.catalog import HostRecord, Personality
from tests.config.helpers import Agent, new_mac
from tests.support.events import Listener
from tests.support.hosts import act, host_where, publish, states, timeline
from tests.support.waiting import eventually

FAST = {"ROOST_INTEST_S": "0.5", "ROOST_STEP_S": "0.3"}


def record(hostname: str | None, personality: str | None, **kw: Any) -> HostRecord:
    return HostRecord(
        uuid=kw.pop("uuid", str(uuid.uuid4())),
        hostname=hostname,
        personality=Personality(personality) if personality else None,
        mgmt_mac=kw.pop("mgmt_mac", new_mac()),
        install_state=kw.pop("install_state", "provisioned"),
        bmc_type=kw.pop("bmc_type", "ipmi"),
        bmc_address=kw.pop("bmc_address", "10.0.0.9"),
        **kw,
    )


async def test_learns_hosts_and_runs_actions_with_starlingx_rules(stack):
    host = stack.start("host", **FAST)
    bus = await stack.bus()
    events = await Listener.on(bus, "host.state.changed", "fault.alarm.*")
    c0 = record("controller-0", "controller")
    w0 = record("worker-0", "worker")
    found = record(None, None, install_state="discovered")
    for r in (c0, w0, found):
        await publish(bus, "added", r)

    async with host.client(stack.tokens.admin) as http:
        h = await host_where(http, "worker-0", lambda h: True, "worker-0 learned")
        assert states(h) == "locked-disabled-online" and h["task"] == ""
        assert h["uuid"] == w0.uuid and h["bmc_address"] == "10.0.0.9"
        assert "bmc_password" not in json.dumps(h)
        d = await host_where(http, found.uuid, lambda h: True, "discovered host tracked")
        assert d["hostname"] is None and states(d) == "locked-disabled-offline"
        await host_where(http, "controller-0", lambda h: True, "controller-0 learned")
        listed = (await http.get("/v1/hosts")).json()["hosts"]
        assert [x["uuid"] for x in listed] == [c0.uuid, w0.uuid, found.uuid]
        lock_alarm = await events.wait_for(
            "200.001 for a learned host",
            type="fault.alarm.set",
            alarm_id="200.001",
            entity_instance_id="host=worker-0",
        )
        assert lock_alarm["data"]["severity"] == "warning"

        # Unlock: in-test at once, enabled and available when it passes.
        r = await act(http, "worker-0", "unlock")
        assert r.status_code == 200, r.text
        assert states(r.json()) == "unlocked-disabled-intest" and r.json()["task"] == "Testing"
        h = await host_where(
            http, "worker-0", lambda h: h["availability"] == "available", "in-test passes"
        )
        assert states(h) == "unlocked-enabled-available" and h["task"] == ""
        await events.wait_for(
            "200.001 cleared by unlock",
            type="fault.alarm.clear",
            alarm_id="200.001",
            entity_instance_id="host=worker-0",
        )
        await events.wait_for(
            "in-test passed event",
            type="host.state.changed",
            hostname="worker-0",
            from_availability="intest",
            to_availability="available",
            to_operational="enabled",
            reason="intest-passed",
        )

        # Wrong state: 409 with the reason and the current state; unknown action: 422.
        r = await act(http, "worker-0", "reboot")
        assert r.status_code == 409
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["errors"][0]["field"] == "action"
        assert "lock it first" in problem["detail"]
        assert problem["state"]["administrative"] == "unlocked"
        assert problem["state"]["availability"] == "available"
        r = await act(http, "worker-0", "explode")
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.action"
        r = await act(http, found.uuid, "unlock")
        assert r.status_code == 409 and "no hostname" in r.json()["detail"]
        assert (await act(http, "worker-9", "lock")).status_code == 404

        # Lock: locked-disabled-online, 200.001 raised again.
        r = await act(http, "worker-0", "lock", reason="replace a disk")
        assert r.status_code == 200 and states(r.json()) == "locked-disabled-online"
        await events.wait_for(
            "lock event",
            type="host.state.changed",
            hostname="worker-0",
            from_administrative="unlocked",
            to_administrative="locked",
            actor="admin",
        )
        sets = [
            e
            for e in events.got
            if e["type"] == "fault.alarm.set" and e["data"]["entity_instance_id"] == "host=worker-0"
        ]
        assert len(sets) >= 1

        # The last unlocked-enabled controller: lock refused, force-lock allowed and recorded.
        assert (await act(http, "controller-0", "unlock")).status_code == 200
        await host_where(
            http, "controller-0", lambda h: h["operational"] == "enabled", "controller enabled"
        )
        r = await act(http, "controller-0", "lock")
        assert r.status_code == 409
        assert "last unlocked-enabled controller" in r.json()["detail"]
        assert r.json()["state"]["operational"] == "enabled"
        r = await act(http, "controller-0", "force-lock", reason="site power work")
        assert r.status_code == 200 and r.json()["administrative"] == "locked"

        # Timeline: every transition with from, to, cause, reason code and actor.
        entries = await timeline(http, "worker-0")
        assert [(e["from"]["availability"], e["to"]["availability"]) for e in entries] == [
            ("online", "online"),  # learned
            ("online", "intest"),
            ("intest", "available"),
            ("available", "online"),  # locked
        ]
        learned, unlock, passed, lock = entries
        assert learned["reason"] == "learned" and learned["actor"] == "config"
        assert unlock["to"] == {
            "administrative": "unlocked",
            "operational": "disabled",
            "availability": "intest",
        }
        assert unlock["task"] == "Testing" and unlock["actor"] == "admin"
        assert passed["reason"] == "intest-passed" and passed["actor"] == "system"
        assert lock["reason"] == "operator-request" and "replace a disk" in lock["cause"]
        forced = (await timeline(http, "controller-0"))[-1]
        assert forced["reason"] == "forced-last-controller"
        assert "site power work" in forced["cause"]
        page = (await http.get("/v1/hosts/worker-0/timeline", params={"limit": 3})).json()
        assert len(page["timeline"]) == 3 and "marker=" in page["next"]
        rest = (await http.get(page["next"])).json()["timeline"]
        assert [e["uuid"] for e in rest] == [lock["uuid"]]

        # Timed steps on a locked host: reboot goes offline and comes back online.
        r = await act(http, "worker-0", "reboot")
        assert r.status_code == 200 and r.json()["task"] == "Rebooting"
        await host_where(
            http, "worker-0", lambda h: h["availability"] == "online" and not h["task"], "reboot"
        )
        assert (await act(http, "worker-0", "power-on")).status_code == 409
        r = await act(http, "worker-0", "power-off")
        assert r.status_code == 200 and r.json()["availability"] == "power-off"

    # A reader may look but not act.
    async with host.client(stack.tokens.reader) as http:
        assert (await http.get("/v1/hosts/worker-0")).status_code == 200
        r = await act(http, "worker-0", "power-on")
        assert r.status_code == 403

    # Renames keep the timeline; deletes remove the host.
    renamed = w0.model_copy(update={"hostname": "worker-7"})
    await publish(bus, "updated", renamed)
    async with host.client(stack.tokens.admin) as http:
        await host_where(http, "worker-7", lambda h: True, "renamed host")
        assert (await http.get("/v1/hosts/worker-0")).status_code == 404
        assert len(await timeline(http, "worker-7")) == 7
        await events.wait_for(
            "200.001 follows the rename",
            type="fault.alarm.set",
            alarm_id="200.001",
            entity_instance_id="host=worker-7",
        )
        # Naming a discovered host lets actions run on it.
        named = found.model_copy(update={"hostname": "worker-5", "personality": Personality.worker})
        await publish(bus, "updated", named)
        await host_where(http, "worker-5", lambda h: True, "named discovered host")
        await publish(bus, "deleted", renamed)

        async def gone():
            return (await http.get(f"/v1/hosts/{w0.uuid}")).status_code == 404

        await eventually(gone, what="deleted host gone")


async def test_an_intest_interrupted_by_a_restart_starts_again(stack):
    host = stack.start("host", ROOST_INTEST_S="2")
    bus = await stack.bus()
    w1 = record("worker-1", "worker")
    await publish(bus, "added", w1)
    async with host.client(stack.tokens.admin) as http:
        await host_where(http, "worker-1", lambda h: True, "worker-1 learned")
        r = await act(http, "worker-1", "unlock")
        assert r.json()["availability"] == "intest"
    host.kill()
    host.start()
    async with host.client(stack.tokens.admin) as http:
        h = await host_where(
            http, "worker-1", lambda h: h["availability"] == "available", "in-test after restart"
        )
        assert states(h) == "unlocked-enabled-available"
        reasons = [e["reason"] for e in await timeline(http, "worker-1")]
        assert reasons == ["learned", "operator-request", "step-restarted", "intest-passed"]


async def test_config_refuses_to_delete_a_host_the_host_service_says_is_unlocked(stack):
    host = stack.start("host", **FAST)
    config = stack.start(
        "config",
        ROOST_STATE_DIR=str(stack.workdir / f"config-state-{uuid.uuid4().hex[:8]}"),
        ROOST_HOST_SERVICE_URL=host.url,
        ROOST_HOST_SERVICE_TOKEN=stack.tokens.peers["config"],
    )
    bus = await stack.bus()
    mac = new_mac()
    async with (
        config.client(stack.tokens.admin) as cfg,
        host.client(stack.tokens.admin) as http,
    ):
        r = await cfg.post(
            "/v1/hosts", json={"hostname": "worker-3", "personality": "worker", "mgmt_mac": mac}
        )
        assert r.status_code == 201, r.text
        h = await host_where(http, "worker-3", lambda h: True, "host learned from config")
        assert h["availability"] == "offline"  # not provisioned yet
        await Agent(bus, mac, "worker-3").applied(1)  # the agent applies version 1
        await host_where(
            http, "worker-3", lambda h: h["availability"] == "online", "provisioned: online"
        )
        assert (await act(http, "worker-3", "unlock")).status_code == 200
        await host_where(
            http, "worker-3", lambda h: h["availability"] == "available", "worker-3 in service"
        )
        r = await cfg.delete("/v1/hosts/worker-3")
        assert r.status_code == 409, r.text
        assert r.json()["errors"][0]["field"] == "administrative"
        assert (await act(http, "worker-3", "lock")).status_code == 200
        assert (await cfg.delete("/v1/hosts/worker-3")).status_code == 204

        async def gone():
            return (await http.get("/v1/hosts/worker-3")).status_code == 404

        await eventually(gone, what="host service forgets the deleted host")
