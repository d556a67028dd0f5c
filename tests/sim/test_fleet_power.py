"""The fleet's BMCs drive its hosts: ``ipmitool chassis power off`` stops a host's agent and keeps
it down, ``power on`` brings it back (it announces again), other hosts carry on."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from roost_sim.bmc import BmcFleet
from roost_sim.fleet import Fleet, FleetSupervisor
from roost_sim.ports import free_port, udp_port_block
from tests.sim.conftest import PASSWORD, USER, ipmitool
from tests.support.agents import listen
from tests.support.waiting import eventually


class Supervised:
    """A :class:`FleetSupervisor` polled in the background, as ``make run`` polls it."""

    def __init__(self, supervisor: FleetSupervisor) -> None:
        self.supervisor = supervisor
        self.polls = 0

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.supervisor.poll)
            self.polls += 1
            await asyncio.sleep(0.1)

    def pid(self, hostname: str) -> int | None:
        proc = self.supervisor.procs[hostname]
        return proc.proc.pid if proc.running and proc.proc is not None else None

    async def polls_pass(self, n: int) -> None:
        target = self.polls + n
        await eventually(
            lambda: asyncio.sleep(0, self.polls >= target), timeout=10, what=f"{n} polls"
        )


@pytest.fixture
async def fleet(stack, tmp_path: Path) -> AsyncIterator[tuple[Fleet, Supervised]]:
    fleet = Fleet(tmp_path, bmc_first_port=udp_port_block(2))
    fleet.seed(2)
    supervisor = FleetSupervisor(
        fleet, stack.amqp_url, tmp_path / "logs", bmc_control_port=free_port()
    )
    supervised = Supervised(supervisor)
    task = asyncio.create_task(supervised.run())
    yield fleet, supervised
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(supervisor.stop)


async def test_power_off_stops_the_agent_and_power_on_starts_it(stack, fleet) -> None:
    fleet_, supervised = fleet
    bus = await stack.bus()
    events = await listen(bus, "agent.host.announced")
    host0, host1 = fleet_.hosts()
    for host in (host0, host1):
        await events.wait_for("agent.host.announced", host.mac, timeout=30)
    pid0, pid1 = supervised.pid(host0.hostname), supervised.pid(host1.hostname)
    assert pid0 and pid1
    user, password = fleet_.bmc_credentials()
    port1 = fleet_.bmc_port(host1)

    async def ipmi(*args: str) -> str:
        r = await asyncio.to_thread(ipmitool, port1, *args, user=user, password=password)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert await ipmi("chassis", "power", "status") == "Chassis Power is on"
    await ipmi("chassis", "power", "off")
    await eventually(
        lambda: asyncio.sleep(0, supervised.pid(host1.hostname) is None),
        timeout=10,
        what="host 1's agent to stop",
    )
    # It stays down while its BMC says off: the supervisor does not restart it.
    await supervised.polls_pass(5)
    assert supervised.pid(host1.hostname) is None
    assert await ipmi("chassis", "power", "status") == "Chassis Power is off"
    assert supervised.pid(host0.hostname) == pid0

    seen = len(events.got)
    await ipmi("chassis", "power", "on")
    await events.wait_for("agent.host.announced", host1.mac, after=seen, timeout=30)
    new_pid1 = supervised.pid(host1.hostname)
    assert new_pid1 and new_pid1 != pid1

    # A power cycle restarts the agent.
    seen = len(events.got)
    await ipmi("chassis", "power", "cycle")
    await events.wait_for("agent.host.announced", host1.mac, after=seen, timeout=30)
    assert supervised.pid(host1.hostname) not in (None, new_pid1)

    # Host 0 was never touched.
    assert supervised.pid(host0.hostname) == pid0
    assert not events.of("agent.host.announced", host0.mac)[1:]
    assert host1.hostname not in supervised.supervisor.given_up


def test_bmc_credentials_are_made_once_and_private(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    user, password = fleet.bmc_credentials()
    assert user == "admin" and 12 <= len(password) <= 20  # IPMI passwords: at most 20 bytes
    assert fleet.bmc_credentials() == (user, password)
    mode = (tmp_path / "fleet" / "bmc.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert Fleet(tmp_path).bmc_port(fleet.add("worker")) == 16230  # index 0


def test_control_channel_adds_a_bmc(tmp_path: Path) -> None:
    """``POST /bmcs`` (how the fleet adds a host's BMC) serves a new port with the fleet's
    user and password and the given power state."""
    port = udp_port_block(1)
    with BmcFleet.create(0, port, USER, PASSWORD) as bmcs:
        control = bmcs.serve_control(0)
        body = {"port": port, "name": "worker-9", "power": "off"}
        r = httpx.post(f"{control.url}/bmcs", json=body, timeout=5)
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "worker-9"
        assert ipmitool(port, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
        again = httpx.post(f"{control.url}/bmcs", json=body, timeout=5)
        assert again.status_code == 400 and "already serves" in again.json()["error"]
