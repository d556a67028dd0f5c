"""Agent heartbeats on both paths: UDP at its period from the host's own address, passive bus
heartbeats, probes answered at once; signing; UDP independent of the broker; the bus path back
after a forced reconnect; a frozen agent silent on both paths."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
import uuid

import pytest

from roost_agent.heartbeat import HeartbeatSender
from roost_shared.bus import Bus
from roost_shared.heartbeat import BadHeartbeat, Kind, decode
from roost_shared.metrics import Metrics
from roost_shared.settings import RoostSettings
from roost_sim.ports import free_port
from tests.support.agents import AgentUnderTest
from tests.support.heartbeats import BusHeartbeats, UdpHeartbeats
from tests.support.stack import Vhost
from tests.support.waiting import eventually

PERIOD_MS = 50
BUS_PERIOD_MS = 200


def fast(udp: UdpHeartbeats) -> dict[str, str]:
    return {
        "ROOST_HEARTBEAT_ADDR": udp.addr,
        "ROOST_HEARTBEAT_PERIOD_MS": str(PERIOD_MS),
        "ROOST_BUS_HEARTBEAT_PERIOD_MS": str(BUS_PERIOD_MS),
    }


@pytest.fixture
async def udp():
    receiver = await UdpHeartbeats.listen()
    yield receiver
    receiver.close()


async def test_udp_heartbeats_at_the_period_from_the_hosts_address(stack, agents, udp):
    agent = agents(**fast(udp))
    first = await eventually(lambda: _first(udp, agent.mac), timeout=20, what="a first datagram")

    window = 2.0
    await eventually(
        _after(first.at + window), timeout=window + 5, what="the counting window to pass"
    )
    counted = [g for g in udp.of(agent.mac) if first.at <= g.at < first.at + window]
    expected = window * 1000 / PERIOD_MS  # 40
    assert 0.75 * expected <= len(counted) <= 1.1 * expected, len(counted)
    assert {g.source for g in counted} == {agent.host.ip}  # bound to the simulated host's IP
    assert len({g.hb.boot_id for g in counted}) == 1
    seqs = [g.hb.seq for g in counted]
    assert seqs == sorted(set(seqs))  # strictly increasing
    assert all(g.hb.kind == Kind.periodic for g in counted)


async def test_bus_heartbeats_and_probe_replies(stack, agents, udp):
    bus = await stack.bus()
    beats = await BusHeartbeats.listen(bus)
    agent = agents(**fast(udp))
    await eventually(
        lambda: _count(beats, agent.mac, Kind.periodic, 3), timeout=20, what="bus heartbeats"
    )
    udp_boot = (await eventually(lambda: _first(udp, agent.mac), what="UDP")).hb.boot_id
    assert {g.hb.boot_id for g in beats.of(agent.mac)} == {udp_boot}

    for number in (7, 4_000_000_000):
        sent = await beats.probe(agent.mac, number)
        reply = await eventually(
            lambda n=number: _reply(beats, agent.mac, n), timeout=5, what=f"reply to probe {number}"
        )
        assert reply.at - sent < 0.5, "a probe is answered at once"


async def test_signed_heartbeats_verify_only_with_their_key(udp):
    key = b"s3cret"
    sender = HeartbeatSender(
        "02:00:00:00:00:2a", str(uuid.uuid4()), addr=udp.addr, period_ms=20, key=key
    )
    sender.start()
    try:
        await eventually(lambda: _count(udp, sender.mac, None, 3), what="signed datagrams")
    finally:
        await sender.stop()
    for data in udp.raw:
        assert decode(data, key).mac == sender.mac
        with pytest.raises(BadHeartbeat, match="signature"):
            decode(data, b"another key")


async def test_udp_goes_on_without_a_broker(udp, tmp_path):
    # Never connected: the broker's port is closed.
    lonely = AgentUnderTest(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/", tmp_path / "lonely", **fast(udp)
    ).start()
    try:
        await eventually(lambda: _count(udp, lonely.mac, None, 10), timeout=20, what="UDP")
    finally:
        lonely.stop()

    # Connected, then its vhost (so its connection) disappears for good.
    vhost = await asyncio.to_thread(Vhost.create)
    agent = AgentUnderTest(vhost.url, tmp_path / "orphan", **fast(udp)).start()
    try:
        bus = Bus(RoostSettings(service="test-listener", amqp_url=vhost.url), Metrics("test"))
        await bus.connect(deadline_s=10)
        beats = await BusHeartbeats.listen(bus)
        await eventually(lambda: _count(beats, agent.mac, None, 1), timeout=20, what="bus beat")
        await bus.close()
        await asyncio.to_thread(vhost.delete)
        gone = time.monotonic()
        await eventually(
            lambda: _count(udp, agent.mac, None, 20, since=gone + 0.5),
            timeout=10,
            what="UDP heartbeats after the broker went away",
        )
        assert agent.proc.running
    finally:
        agent.stop()


async def test_bus_heartbeats_resume_after_the_connection_is_closed(stack, agents, udp):
    bus = await stack.bus()
    beats = await BusHeartbeats.listen(bus)
    agent = agents(**fast(udp))
    await eventually(lambda: _count(beats, agent.mac, None, 2), timeout=20, what="bus beats")

    closed = await asyncio.to_thread(_close_agent_connections, stack.vhost.name)
    assert len(closed) == 1, "the agent's connection was found"
    at = time.monotonic()

    async def reconnected() -> bool:
        pids = await asyncio.to_thread(_agent_connections, stack.vhost.name)
        return bool(pids) and closed[0] not in pids

    await eventually(reconnected, timeout=30, interval=0.5, what="a new agent connection")
    await eventually(
        lambda: _count(beats, agent.mac, Kind.periodic, 2, since=at),
        timeout=30,
        what="bus heartbeats after the reconnect",
    )
    # The probe queue and its binding came back too.
    await beats.probe(agent.mac, 99)
    await eventually(lambda: _reply(beats, agent.mac, 99), timeout=5, what="probe reply")
    # UDP did not notice: no gap in the datagrams around the forced close.
    times = [g.at for g in udp.of(agent.mac, since=at - 1)]
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5


async def test_a_frozen_agent_is_silent_on_both_paths_and_resumes(stack, agents, udp):
    bus = await stack.bus()
    beats = await BusHeartbeats.listen(bus)
    agent = agents(**fast(udp))
    await eventually(lambda: _count(beats, agent.mac, None, 2), timeout=20, what="bus beats")
    assert agent.proc.proc is not None
    pid = agent.proc.proc.pid

    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        # Silent on both paths: nothing newer than shortly after the freeze, for well over
        # a bus period (anything in flight at SIGSTOP lands within milliseconds).
        await eventually(_after(frozen + 3 * BUS_PERIOD_MS / 1000), timeout=5, what="3 periods")
        assert not udp.of(agent.mac, since=frozen + 0.1)
        assert not beats.of(agent.mac, since=frozen + 0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    await eventually(lambda: _count(udp, agent.mac, None, 5, since=resumed), what="UDP again")
    await eventually(lambda: _count(beats, agent.mac, None, 1, since=resumed), what="bus again")
    # Missed slots are skipped, not sent in a burst: the first 0.2 s after resuming hold
    # about 0.2 s worth of datagrams, not the ~12 slots missed while frozen.
    first = udp.of(agent.mac, since=resumed)[0].at
    burst = [g for g in udp.of(agent.mac, since=resumed) if g.at < first + 0.2]
    assert len(burst) <= 0.2 * 1000 / PERIOD_MS + 2, len(burst)


# Helpers -----------------------------------------------------------------------------------


def _after(when: float):
    async def probe() -> bool:
        return time.monotonic() >= when

    return probe


async def _first(received, mac: str):
    got = received.of(mac)
    return got[0] if got else None


async def _count(received, mac: str, kind: Kind | None, n: int, since: float = 0.0) -> bool:
    return len(received.of(mac, kind, since)) >= n


async def _reply(beats: BusHeartbeats, mac: str, number: int):
    for g in beats.of(mac, Kind.probe_reply):
        if g.hb.probe == number:
            return g
    return None


def _agent_connections(vhost: str) -> list[str]:
    """Pids of the agents' connections (``connection_name`` roost-agent) in ``vhost``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "vhost", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    named = '{"connection_name","roost-agent"}'
    return [
        fields[0]
        for fields in (line.split("\t") for line in listed.splitlines())
        if len(fields) == 3 and fields[1] == vhost and named in fields[2]
    ]


def _close_agent_connections(vhost: str) -> list[str]:
    """Force-close the agents' connections in ``vhost`` (``rabbitmqctl close_connection``)."""
    pids = _agent_connections(vhost)
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: forced close"],
            capture_output=True,
            check=True,
            timeout=60,
        )
    return pids
