"""A node's life as config sees it: discovered, provisioned, configured, reconfigured by a system
change, lagging (250.001), re-sent on return, failing (200.011); inventory; conflicts."""

from __future__ import annotations

from datetime import datetime

from roost_shared.commands import agent_key
from tests.config.helpers import (
    Agent,
    all_hosts,
    host_where,
    new_mac,
    tap_commands,
    tap_events,
)
from tests.support.waiting import eventually


def _is(event_type: str, **data):
    def match(m):
        return m["type"] == event_type and all(m["data"].get(k) == v for k, v in data.items())

    return match


async def test_discovered_node_is_provisioned_and_reconfigured_by_a_system_change(
    stack, start_config
):
    config = start_config()
    bus = await stack.bus()
    events = await tap_events(bus)
    mac = new_mac()
    commands = await tap_commands(bus, mac)
    agent = Agent(bus, mac, hostname="localhost")
    async with config.client(stack.tokens.admin) as http:
        # An unknown MAC announces itself: a discovered host, and a customer log.
        await agent.announce()

        async def discovered():
            hosts = await all_hosts(http)
            return hosts[0] if hosts else None

        host = await eventually(discovered, what="discovered host")
        assert host["install_state"] == "discovered"
        assert host["hostname"] is None and host["personality"] is None
        assert host["reported_hostname"] == "localhost" and host["mgmt_mac"] == mac
        assert host["config_target"] == 0 and host["config_status"] == "none"
        # Without a name, the MAC (any spelling) finds it too.
        by_mac = await http.get(f"/v1/hosts/{mac.upper()}")
        assert by_mac.status_code == 200 and by_mac.json()["uuid"] == host["uuid"]
        assert (await http.get("/v1/hosts/02:00:00:ff:ff:ff")).status_code == 404
        log = await events.wait_for(
            _is("fault.log.write", event_log_id="200.020"), "discovery customer log"
        )
        assert mac in log["data"]["reason_text"]
        await events.wait_for(_is("config.host.added", mgmt_mac=mac), "config.host.added")
        assert not commands.raw, "nothing is sent to a node without hostname and personality"

        # Inventory is stored and shown, and replaced when the agent re-reports a change.
        await agent.inventory(memory_mb=65536)

        async def inventory(memory):
            r = await http.get(f"/v1/hosts/{host['uuid']}/inventory")
            return r.json() if r.status_code == 200 and r.json()["memory_mb"] == memory else None

        inv = await eventually(lambda: inventory(65536), what="inventory")
        assert inv["cpu"]["cores"] == 16 and inv["disks"][0]["device"] == "/dev/nvme0n1"
        assert inv["ports"][0]["link"] is True
        await agent.inventory(memory_mb=131072, disks=2)
        inv2 = await eventually(lambda: inventory(131072), what="changed inventory")
        assert len(inv2["disks"]) == 2 and inv2["changed_at"] > inv["changed_at"]

        # The operator names it: provisioning, version 1 sent to its agent.
        r = await http.patch(
            f"/v1/hosts/{host['uuid']}",
            json={"hostname": "worker-1", "personality": "worker", "labels": {"zone": "a"}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["install_state"] == "provisioning" and r.json()["config_target"] == 1
        cmd = await commands.wait_for(lambda m: m["type"] == "config.apply", "config.apply v1")
        assert cmd["data"]["version"] == 1 and cmd["data"]["hostname"] == "worker-1"
        assert cmd["data"]["personality"] == "worker"
        assert cmd["data"]["config"]["labels"] == {"zone": "a"}
        assert cmd["data"]["config"]["settings"]["kubernetes_role"] == "worker"
        assert datetime.fromisoformat(cmd["deadline"]) > datetime.fromisoformat(cmd["time"])
        await events.wait_for(
            _is("config.host.updated", hostname="worker-1", config_target=1), "host updated"
        )

        # The agent applies it: provisioned.
        await agent.applied(1)
        host = await host_where(
            http, "worker-1", lambda h: h["install_state"] == "provisioned", "provisioned"
        )
        assert host["config_applied"] == 1 and host["config_status"] == "up-to-date"

        # A second host added by hand is configured at once.
        mac2 = new_mac()
        commands2 = await tap_commands(bus, mac2)
        r = await http.post(
            "/v1/hosts",
            json={"hostname": "storage-0", "personality": "storage", "mgmt_mac": mac2.upper()},
        )
        assert r.status_code == 201, r.text
        assert r.json()["mgmt_mac"] == mac2 and r.json()["install_state"] == "provisioning"
        await commands2.wait_for(_is("config.apply", version=1), "storage-0 v1")
        await events.wait_for(_is("config.host.added", hostname="storage-0"), "storage-0 added")

        # A system change gives every configured host a new version.
        r = await http.patch("/v1/system", json={"dns_servers": ["10.0.0.53"], "timezone": "UTC"})
        assert r.status_code == 200 and r.json()["dns_servers"] == ["10.0.0.53"]
        for tap, name in ((commands, "worker-1"), (commands2, "storage-0")):
            cmd = await tap.wait_for(_is("config.apply", version=2), f"{name} v2")
            assert cmd["data"]["config"]["system"]["dns_servers"] == ["10.0.0.53"]
        # The same change again (and a description) alters no configuration: no version 3.
        r = await http.patch("/v1/system", json={"dns_servers": ["10.0.0.53"], "description": "x"})
        assert r.status_code == 200
        r = await http.get("/v1/hosts/worker-1/config")
        cfg = r.json()
        assert cfg["config_target"] == 2 and cfg["config_applied"] == 1 and cfg["out_of_date"]
        assert cfg["desired"]["system"]["dns_servers"] == ["10.0.0.53"]

        # User parameters are part of the desired configuration.
        r = await http.patch("/v1/hosts/worker-1/parameters", json={"parameters": {"mtu": 9000}})
        assert r.status_code == 200 and r.json()["config_target"] == 3
        cmd = await commands.wait_for(_is("config.apply", version=3), "worker-1 v3")
        assert cmd["data"]["config"]["parameters"] == {"mtu": 9000}
        await agent.applied(3)
        await host_where(http, "worker-1", lambda h: h["config_applied"] == 3, "applied 3")
        # Never backwards: a late report of version 2 changes nothing.
        await agent.applied(2)
        await agent.inventory(memory_mb=1)  # a later message in the same queue, as a fence
        await eventually(lambda: inventory(1), what="fence")
        assert (await http.get("/v1/hosts/worker-1")).json()["config_applied"] == 3

        # Filters and paging.
        assert [h["hostname"] for h in await all_hosts(http, personality="storage")] == [
            "storage-0"
        ]
        page = (await http.get("/v1/hosts", params={"limit": 1})).json()
        assert len(page["hosts"]) == 1 and "marker=" in page["next"]
        rest = await all_hosts(http, limit=1, marker=page["hosts"][0]["uuid"])
        assert rest[0]["uuid"] != page["hosts"][0]["uuid"]


async def test_lagging_host_raises_250_001_gets_its_config_again_and_clears(stack, start_config):
    config = start_config()
    bus = await stack.bus()
    faults = await tap_events(bus, "fault.#")
    mac = new_mac()
    commands = await tap_commands(bus, mac)
    agent = Agent(bus, mac, hostname="controller-0")
    async with config.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/hosts",
            json={"hostname": "controller-0", "personality": "controller", "mgmt_mac": mac},
        )
        assert r.status_code == 201
        first = await commands.wait_for(_is("config.apply", version=1), "v1")

        # Nobody applies it: after the grace period, 250.001 on host=controller-0.
        alarm = await faults.wait_for(
            _is("fault.alarm.set", alarm_id="250.001", entity_instance_id="host=controller-0"),
            "250.001 raised",
        )
        assert alarm["data"]["severity"] == "major"
        assert (await http.get("/v1/hosts/controller-0/config")).json()["alarmed"] is True

        # The agent comes back behind: it gets the configuration again, with a fresh deadline.
        await agent.announce(config_applied=0)

        async def resent():
            again = [m for m in commands.of_type("config.apply") if m["id"] != first["id"]]
            return again[0] if again else None

        again = await eventually(resent, what="config re-sent")
        assert again["data"]["version"] == 1 and again["deadline"] > first["deadline"]

        # It applies: the alarm clears.
        await agent.applied(1)
        await faults.wait_for(
            _is("fault.alarm.clear", alarm_id="250.001", entity_instance_id="host=controller-0"),
            "250.001 cleared",
        )
        host = (await http.get("/v1/hosts/controller-0")).json()
        assert host["install_state"] == "provisioned" and host["config_status"] == "up-to-date"

        # A failed apply raises 200.011; a later success clears it.
        r = await http.put("/v1/hosts/controller-0/labels", json={"labels": {"role": "edge"}})
        assert r.status_code == 200 and r.json()["config_target"] == 2
        await commands.wait_for(_is("config.apply", version=2), "v2")
        await agent.applied(2, ok=False, error="puppet: could not write /etc/ntp.conf")
        failure = await faults.wait_for(
            _is("fault.alarm.set", alarm_id="200.011", entity_instance_id="host=controller-0"),
            "200.011 raised",
        )
        assert "/etc/ntp.conf" in failure["data"]["reason_text"]
        cfg = await eventually(
            lambda: _config_if(http, "controller-0", "failed"), what="status failed"
        )
        assert cfg["failed_version"] == 2
        await agent.applied(2)
        await faults.wait_for(
            _is("fault.alarm.clear", alarm_id="200.011", entity_instance_id="host=controller-0"),
            "200.011 cleared",
        )

        # An agent that restarts up to date is not sent anything.
        sent = len(commands.of_type("config.apply"))
        await agent.announce(config_applied=2)
        await agent.inventory()  # fence: later in the same queue
        await eventually(
            lambda: _ok(http.get("/v1/hosts/controller-0/inventory")), what="inventory fence"
        )
        assert len(commands.of_type("config.apply")) == sent

        # Deleting the host clears its alarms and tells everyone.
        events = await tap_events(bus, "config.host.deleted")
        r = await http.delete("/v1/hosts/controller-0")
        assert r.status_code == 204
        await faults.wait_for(
            lambda m: (
                m["type"] == "fault.alarm.clear"
                and m["data"] == {"entity_instance_id": "host=controller-0"}
            ),
            "clear all of host=controller-0",
        )
        await events.wait_for(_is("config.host.deleted", hostname="controller-0"), "deleted")
        assert (await http.get("/v1/hosts/controller-0")).status_code == 404


async def _config_if(http, ref, status):
    r = await http.get(f"/v1/hosts/{ref}/config")
    return r.json() if r.json()["config_status"] == status else None


async def _ok(request) -> bool:
    return (await request).status_code == 200


async def test_node_claiming_another_hosts_name_is_not_merged(stack, start_config):
    config = start_config()
    bus = await stack.bus()
    faults = await tap_events(bus, "fault.#")
    owner_mac, intruder_mac = new_mac(), new_mac()
    owner = Agent(bus, owner_mac, hostname="old-name")
    intruder = Agent(bus, intruder_mac, hostname="worker-1")
    async with config.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/hosts",
            json={"hostname": "worker-1", "personality": "worker", "mgmt_mac": owner_mac},
        )
        assert r.status_code == 201
        worker_uuid = r.json()["uuid"]
        # The real worker-1 still calls itself by an old name: fine, the operator renamed it.
        await owner.announce()
        await host_where(
            http, "worker-1", lambda h: h["reported_hostname"] == "old-name", "owner seen"
        )

        # Another machine says it is worker-1: refused, alarmed, kept apart.
        await intruder.announce()
        alarm = await faults.wait_for(_is("fault.alarm.set", alarm_id="250.010"), "conflict alarm")
        assert alarm["data"]["entity_instance_id"] == f"host=worker-1.conflict={intruder_mac}"
        assert intruder_mac in alarm["data"]["reason_text"]
        hosts = {h["mgmt_mac"]: h for h in await all_hosts(http)}
        assert (
            hosts[owner_mac]["uuid"] == worker_uuid and hosts[owner_mac]["hostname"] == "worker-1"
        )
        stranger = hosts[intruder_mac]
        assert stranger["hostname"] is None and stranger["install_state"] == "discovered"
        assert "worker-1" in stranger["conflict"]
        assert not [
            m
            for m in faults.messages
            if m["type"] == "fault.alarm.set" and m["data"]["alarm_id"] != "250.010"
        ]

        # The operator cannot give it the taken name, but can give it another: conflict over.
        r = await http.patch(f"/v1/hosts/{stranger['uuid']}", json={"hostname": "worker-1"})
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == "body.hostname"
        r = await http.patch(
            f"/v1/hosts/{stranger['uuid']}", json={"hostname": "worker-2", "personality": "worker"}
        )
        assert r.status_code == 200 and r.json()["conflict"] is None
        assert r.json()["install_state"] == "provisioning"
        await faults.wait_for(
            _is(
                "fault.alarm.clear",
                alarm_id="250.010",
                entity_instance_id=f"host=worker-1.conflict={intruder_mac}",
            ),
            "conflict cleared",
        )
        assert agent_key(intruder_mac) == "agent." + intruder_mac.replace(":", "")
