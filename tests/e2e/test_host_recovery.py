"""End to end with the simulated fleet: real agents (processes), real BMCs over IPMI, the real
config, host and fault services. A frozen host is detected, fenced and powered on through its
BMC, and comes back available; a host that restarts by itself is taken back without any power
action; the alarms are raised and cleared in the fault service."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.nft import nft_table
from tests.support.site import Site, open_site, where
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def site(stack, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    """A site of 2 hosts, or the test's ``@pytest.mark.parametrize("site", [n], indirect=True)``."""
    async with open_site(stack, tmp_path, getattr(request, "param", 2)) as s:
        yield s


async def _timeline(http: httpx.AsyncClient, ref: str) -> list[dict[str, Any]]:
    return (await http.get(f"/v1/hosts/{ref}/timeline", params={"limit": 1000})).json()["timeline"]


async def _alarm(fault_http: httpx.AsyncClient, alarm_id: str, entity: str) -> dict | None:
    alarms = (await fault_http.get("/v1/alarms", params={"expand": "True"})).json()["alarms"]
    found = [a for a in alarms if a["alarm_id"] == alarm_id and a["entity_instance_id"] == entity]
    return found[0] if found else None


def _power_events(site: Site, hostname: str) -> list[str]:
    """Every power change the simulated BMCs made to ``hostname`` (a read-only look: ``after=0``
    does not move the supervisor's cursor)."""
    events = site.supervisor.bmcs.client.get("/events", params={"after": 0}).json()["events"]
    return [e["state"] for e in events if e["name"] == hostname]


async def test_a_frozen_host_is_fenced_power_cycled_and_back_available(site: Site):
    async with site.client(site.host) as http, site.client(site.fault) as fault:
        frozen_at = time.monotonic()
        os.kill(site.agent_pid("worker-0"), signal.SIGSTOP)  # hung: heartbeats stop, BMC fine
        await where(http, "worker-0", lambda d: d["availability"] == "failed", "failed", 5)
        detected = time.monotonic() - frozen_at
        assert detected < 1.5, f"failed only after {detected:.2f}s"
        alarm = await eventually(
            lambda: _alarm(fault, "200.004", "host=worker-0"), what="200.004 in the fault service"
        )
        assert alarm["severity"] == "critical"

        await where(http, "worker-0", lambda d: d["availability"] == "available", "recovered", 60)
        entries = await _timeline(http, "worker-0")
        reasons = [e["reason"] for e in entries]
        first = next(i for i, r in enumerate(reasons) if r.startswith("heartbeat-lost"))
        # The BMC confirms within a second ("heartbeat-lost", power on); on a loaded machine
        # its first login may take longer ("heartbeat-lost-bmc-unconfirmed"): failed either way.
        assert reasons[first] in ("heartbeat-lost", "heartbeat-lost-bmc-unconfirmed"), reasons
        assert "BMC" in entries[first]["cause"]
        assert reasons[first + 1 :] == [
            "recovery-fenced",
            "recovery-power-on",
            "recovery-host-returned",
            "intest-passed",
        ], reasons
        await eventually(lambda: _cleared(fault), what="200.004 cleared")
        assert _power_events(site, "worker-0")[-2:] == ["off", "on"]
        # The controller was never touched.
        c0 = (await http.get("/v1/hosts/controller-0")).json()
        assert c0["availability"] == "available"
        assert not [e for e in await _timeline(http, "controller-0") if "recovery" in e["reason"]]


async def _cleared(fault: httpx.AsyncClient) -> bool:
    return await _alarm(fault, "200.004", "host=worker-0") is None


async def test_a_host_that_reboots_cleanly_is_taken_back_without_power_action(site: Site):
    async with site.client(site.host) as http:
        before = _power_events(site, "worker-0")
        # A clean stop (a reboot): the agent says so, and comes back a few seconds later.
        site.paused = True
        os.kill(site.agent_pid("worker-0"), signal.SIGTERM)
        await where(http, "worker-0", lambda d: d["availability"] == "failed", "down", 10)
        site.paused = False  # it boots

        async def came_back():
            entries = await _timeline(http, "worker-0")
            reasons = [e["reason"] for e in entries]
            if "heartbeat-lost" in reasons and reasons[-1] == "intest-passed":
                return entries
            return None

        entries = await eventually(came_back, timeout=30, what="worker-0 failed and back")
        story = [e["reason"] for e in entries]
        story = story[story.index("heartbeat-lost") :]
        assert story == [
            "heartbeat-lost",
            "recovery-host-returned",
            "intest-passed",
        ], story
        assert "announced a clean stop" in entries[-3]["cause"]
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert h["availability"] == "available"
        assert _power_events(site, "worker-0") == before


async def test_operator_power_actions_go_through_the_bmc_and_wrong_credentials_are_refused(
    site: Site,
):
    async with site.client(site.host) as http, site.client(site.config) as config:
        r = await http.post("/v1/hosts/worker-0/actions", json={"action": "lock"})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/hosts/worker-0/actions", json={"action": "power-off"})
        assert r.status_code == 200, r.text
        assert r.json()["task"] == "Powering-off"
        await where(http, "worker-0", lambda d: d["availability"] == "power-off", "off", 20)
        assert _power_events(site, "worker-0")[-1] == "off"
        await eventually(
            lambda: asyncio.sleep(0, "worker-0" in site.supervisor.powered_off),
            what="the fleet cut worker-0's power",
        )
        r = await http.post("/v1/hosts/worker-0/actions", json={"action": "power-on"})
        assert r.status_code == 200, r.text
        # Powered on: offline until its agent heartbeats, then online.
        await where(http, "worker-0", lambda d: d["availability"] == "online", "online", 30)
        assert _power_events(site, "worker-0")[-1] == "on"

        # Wrong BMC credentials: the power-off is refused by the BMC, the host is unchanged
        # and the timeline says why.
        r = await config.patch("/v1/hosts/worker-0", json={"bmc_password": "not-the-password"})
        assert r.status_code == 200, r.text

        async def refused_by_the_bmc():
            bmc = (await http.get("/v1/hosts/worker-0/bmc")).json()
            return (bmc.get("last_error") or {}).get("kind") == "auth"

        # The host service has the new (wrong) password once its poll is refused with it.
        await eventually(refused_by_the_bmc, timeout=20, what="the BMC refuses the password")

        async def bmc_refuses():
            r = await http.post("/v1/hosts/worker-0/actions", json={"action": "power-off"})
            assert r.status_code in (200, 409), r.text
            if r.status_code == 409:  # the previous attempt is still running
                return None
            # One attempt is bounded by ROOST_BMC_TIMEOUT_S (2 s) and its retries when the
            # simulator is slow to answer on a loaded machine: allow for all of them.
            entry = await eventually(
                lambda: _last_entry(http, "worker-0", "bmc-failed"),
                timeout=30,
                what="power-off fails",
            )
            return entry

        entry = await eventually(bmc_refuses, timeout=60, what="power-off refused by the BMC")
        assert "power-off failed" in entry["cause"]
        assert "auth" in entry["cause"].lower() or "password" in entry["cause"].lower()
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert h["availability"] == "online" and h["task"] == ""
        assert _power_events(site, "worker-0")[-1] == "on"


async def _last_entry(http: httpx.AsyncClient, ref: str, reason: str) -> dict | None:
    entries = await _timeline(http, ref)
    return entries[-1] if entries and entries[-1]["reason"] == reason else None


@pytest.mark.parametrize("site", [5], indirect=True)
async def test_three_of_five_hosts_silent_together_are_held_without_power_cycles(site: Site):
    frozen = ["worker-0", "worker-1", "worker-2"]
    before = {h: _power_events(site, h) for h in frozen}
    async with site.client(site.host) as http, site.client(site.fault) as fault:
        for name in frozen:
            os.kill(site.agent_pid(name), signal.SIGSTOP)
        mnfa = await eventually(
            lambda: _alarm(fault, "200.030", "system=roost"), what="one MNFA alarm"
        )
        assert all(name in mnfa["reason_text"] for name in frozen), mnfa["reason_text"]
        for name in frozen:
            await where(http, name, lambda d: d["availability"] == "degraded", "held", 10)
        # Held well past every failure threshold: nothing failed, nothing power-cycled.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            hosts = (await http.get("/v1/hosts")).json()["hosts"]
            assert not [h for h in hosts if h["availability"] == "failed"], hosts
            await asyncio.sleep(0.2)  # between two looks at an invariant, not a wait
        for name in frozen:
            os.kill(site.agent_pid(name), signal.SIGCONT)
        for name in frozen:
            await where(http, name, lambda d: d["availability"] == "available", "back", 10)
        await eventually(lambda: _gone(fault, "200.030", "system=roost"), what="MNFA alarm cleared")
        assert {h: _power_events(site, h) for h in frozen} == before
        assert await _alarm(fault, "200.004", "host=worker-0") is None


async def _gone(fault: httpx.AsyncClient, alarm_id: str, entity: str) -> bool:
    return await _alarm(fault, alarm_id, entity) is None


async def test_an_unreachable_bmc_raises_its_alarm_and_the_host_stays_available(site: Site):
    port = site.fleet.bmc_port(next(h for h in site.fleet.hosts() if h.hostname == "worker-0"))
    bmcs = site.supervisor.bmcs.client
    async with site.client(site.host) as http, site.client(site.fault) as fault:
        assert bmcs.post(f"/bmcs/{port}/faults", json={"unreachable": True}).status_code == 200
        alarm = await eventually(
            lambda: _alarm(fault, "200.010", "host=worker-0"), timeout=30, what="200.010"
        )
        assert "worker-0" in alarm["reason_text"]
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert h["availability"] == "available"
        assert bmcs.post(f"/bmcs/{port}/faults", json={"unreachable": False}).status_code == 200
        await eventually(
            lambda: _gone(fault, "200.010", "host=worker-0"), timeout=60, what="cleared"
        )
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert h["availability"] == "available"
        assert not [e for e in await _timeline(http, "worker-0") if "recovery" in e["reason"]]


async def test_a_lost_management_path_degrades_without_any_power_action(site: Site):
    worker = next(h for h in site.fleet.hosts() if h.hostname == "worker-0")
    before = _power_events(site, "worker-0")
    port = int(site.host.env["ROOST_HEARTBEAT_PORT"])
    async with site.client(site.host) as http, site.client(site.fault) as fault:
        with nft_table() as table:
            table.drop_udp(port, saddr=worker.ip)  # worker-0's UDP heartbeats, nothing else
            await where(http, "worker-0", lambda d: d["availability"] == "degraded", "degraded")
            alarm = await eventually(
                lambda: _alarm(fault, "200.005", "host=worker-0"), what="200.005 raised"
            )
            assert alarm["severity"] == "major"
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # well past every failure threshold
                d = (await http.get("/v1/hosts/worker-0")).json()
                assert d["availability"] == "degraded", d
                await asyncio.sleep(0.2)  # between two looks at an invariant, not a wait
        await where(http, "worker-0", lambda d: d["availability"] == "available", "restored")
        await eventually(lambda: _gone(fault, "200.005", "host=worker-0"), what="cleared")
    assert _power_events(site, "worker-0") == before
