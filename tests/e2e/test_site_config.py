"""A small site end to end: real config and fault services, real agent processes on simulated
hosts, real RabbitMQ and the embedded database. Discovery, provisioning, a configuration change
across the fleet, a host that was down during the change converging with 250.001 raised while it
lagged and cleared after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agents import AgentUnderTest
from tests.support.waiting import eventually


async def _hosts(http) -> list[dict]:
    return (await http.get("/v1/hosts")).json()["hosts"]


async def _out_of_date_alarms(fault_http) -> list[dict]:
    body = (
        await fault_http.get("/v1/alarms", params={"q.field": "alarm_id", "q.value": "250.001"})
    ).json()
    return body["alarms"]


@pytest.mark.slow
async def test_discover_provision_change_and_converge_after_downtime(stack, tmp_path: Path):
    fault = stack.start("fault")
    # Grace 3 s: on a loaded machine a healthy host may take over 1 s to apply, and would raise
    # (and clear) 250.001 of its own beside the lagging host's.
    config = stack.start("config", ROOST_CONFIG_GRACE_S="3", ROOST_DRIFT_CHECK_PERIOD_S="0.2")
    pycache = {"PYTHONPYCACHEPREFIX": str(stack.workdir / "pycache")}
    agents = [
        AgentUnderTest(stack.amqp_url, tmp_path, p, **pycache)
        for p in ("controller", "worker", "worker")
    ]
    try:
        for agent in agents:
            agent.start()
        async with (
            config.client(stack.tokens.admin) as http,
            fault.client(stack.tokens.reader) as fault_http,
        ):
            # 1. Every new agent shows up as a discovered host (no name, no personality).
            async def discovered():
                hosts = await _hosts(http)
                return (
                    hosts
                    if len(hosts) == 3 and all(h["install_state"] == "discovered" for h in hosts)
                    else None
                )

            hosts = await eventually(discovered, timeout=30, what="3 discovered hosts")
            by_mac = {h["mgmt_mac"]: h for h in hosts}
            assert {a.mac for a in agents} == set(by_mac)
            assert all(h["personality"] is None for h in hosts)

            # 2. The operator names them and gives them a personality: they get configured.
            for agent in agents:
                r = await http.patch(
                    f"/v1/hosts/{by_mac[agent.mac]['uuid']}",
                    json={"hostname": agent.host.hostname, "personality": agent.host.profile},
                )
                assert r.status_code == 200, r.text

            async def provisioned(version: int, which: list[AgentUnderTest]):
                hosts = {h["mgmt_mac"]: h for h in await _hosts(http)}
                return all(
                    hosts[a.mac]["install_state"] == "provisioned"
                    and hosts[a.mac]["config_applied"] == version
                    for a in which
                )

            await eventually(lambda: provisioned(1, agents), timeout=30, what="all provisioned")
            for agent in agents:  # the agent itself remembers what it applied
                applied = json.loads((agent.state_dir / "applied.json").read_text())
                assert applied == {"version": 1}

            # 3. One host is down while the operator changes the system's DNS servers.
            down = agents[2]
            down.stop()
            r = await http.patch("/v1/system", json={"dns_servers": ["192.0.2.53"]})
            assert r.status_code == 200
            await eventually(
                lambda: provisioned(2, agents[:2]),
                timeout=30,
                what="running hosts applied version 2",
            )

            # 4. While it lags past the grace period, 250.001 is raised on it (in fault).
            async def lag_alarm():
                alarms = await _out_of_date_alarms(fault_http)
                return (
                    alarms
                    if [a["entity_instance_id"] for a in alarms] == [f"host={down.host.hostname}"]
                    else None
                )

            await eventually(lag_alarm, timeout=30, what="250.001 on the lagging host")
            lagging = (await http.get(f"/v1/hosts/{down.host.hostname}/config")).json()
            assert (lagging["config_target"], lagging["config_applied"]) == (2, 1)

            # 5. It comes back: it announces version 1, config re-sends 2, it converges and the
            # alarm clears.
            down.start()
            await eventually(
                lambda: provisioned(2, agents), timeout=30, what="returning host caught up"
            )

            async def cleared():
                return await _out_of_date_alarms(fault_http) == []

            await eventually(cleared, timeout=30, what="250.001 cleared")
            history = (
                await fault_http.get(
                    "/v1/event_log", params={"q.field": "event_log_id", "q.value": "250.001"}
                )
            ).json()["event_log"]
            assert [e["state"] for e in history] == ["clear", "set"]
            assert json.loads((down.state_dir / "applied.json").read_text()) == {"version": 2}
            current = (down.state_dir / "config" / "current.json").read_text()
            assert "192.0.2.53" in current
    finally:
        for agent in agents:
            agent.stop()
