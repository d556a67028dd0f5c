"""Attacks on heartbeats, as someone on the management network would make them: a real agent
process heartbeats to the real host service through a UDP relay that records every datagram
(the attacker's capture), then the agent is frozen (SIGSTOP: silent on both paths, like a hung
node) and the attacker keeps the host "alive" with UDP datagrams of its own:

* the captured datagrams, replayed from the agent's own address;
* heartbeats forged for the host without its key (unsigned, and signed with a guessed key), a
  new boot each time;
* heartbeats signed with the host's real key (as if a recording of it could be re-signed)
  but sent from an address that is not the host's management address.

Each time the host must still be declared failed, and the refusal counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from roost_shared.heartbeat import Heartbeat, Kind, decode, encode
from tests.host.test_host_service import record
from tests.support.agents import AgentUnderTest
from tests.support.hosts import act, host_where, publish
from tests.support.stack import SECRET_ENV
from tests.support.waiting import eventually

FAST = {"ROOST_INTEST_S": "0.3", "ROOST_STEP_S": "0.3", "ROOST_HEARTBEAT_BUS_LOSS_MS": "6000"}


class Relay(asyncio.DatagramProtocol):
    """Between the agent and the host service: forwards each datagram from the agent's own
    address (so the host service sees the agent) and keeps a copy of it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.captured: list[bytes] = []
        self.port = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.captured.append(data)
        self.out.sendto(data, self.target)


@dataclass
class Victim:
    agent: AgentUnderTest
    relay: Relay
    host_port: int
    http: httpx.AsyncClient
    frozen: bool = False
    sent: list[bytes] = field(default_factory=list)

    def freeze(self) -> None:
        assert self.agent.proc.proc is not None
        os.kill(self.agent.proc.proc.pid, signal.SIGSTOP)
        self.frozen = True


@contextlib.asynccontextmanager
async def victim(stack, tmp_path: Path) -> AsyncIterator[Victim]:
    """A host service and one available host whose real agent heartbeats through a relay."""
    svc = stack.start("host", **FAST)
    host_port = int(svc.env["ROOST_HEARTBEAT_PORT"])
    loop = asyncio.get_running_loop()
    relay = Relay(("127.0.0.1", host_port))
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    relay.port = transport.get_extra_info("sockname")[1]
    agent = AgentUnderTest(
        stack.amqp_url,
        tmp_path,
        ROOST_HEARTBEAT_ADDR=f"127.0.0.1:{relay.port}",
        PYTHONPYCACHEPREFIX=str(stack.workdir / "pycache"),
    )
    relay.out.bind((agent.host.ip, 0))  # forwarded from the simulated host's own address
    bus = await stack.bus()
    rec = record(
        agent.host.hostname,
        "worker",
        mgmt_mac=agent.mac,
        mgmt_ip=agent.host.ip,
        bmc_type=None,
        bmc_address=None,
    )
    agent.start()
    v = None
    try:
        async with svc.client(stack.tokens.admin) as http:
            await publish(bus, "added", rec)
            await host_where(http, rec.hostname, lambda d: True, "host learned")
            assert (await act(http, rec.hostname, "unlock")).status_code == 200
            await host_where(
                http, rec.hostname, lambda d: d["availability"] == "available", "available"
            )
            await eventually(
                lambda: len(relay.captured) >= 20, timeout=30, what="a capture of heartbeats"
            )
            v = Victim(agent, relay, host_port, http)
            yield v
    finally:
        if v is not None and v.frozen and agent.proc.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.proc.proc.pid, signal.SIGCONT)
        agent.stop()
        transport.close()
        relay.out.close()


async def keep_sending(forge: Callable[[int], bytes], source_ip: str, target: tuple[str, int]):
    """The attacker: a datagram every 50 ms (twice the agent's rate) until cancelled."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source_ip, 0))
        n = 0
        while True:
            s.sendto(forge(n), target)
            n += 1
            await asyncio.sleep(0.05)


async def declared_failed(v: Victim, forge: Callable[[int], bytes], source_ip: str) -> None:
    """Freeze the agent, run the attacker, and require the failure anyway."""
    v.freeze()
    attacker = asyncio.create_task(keep_sending(forge, source_ip, ("127.0.0.1", v.host_port)))
    try:
        doc = await host_where(
            v.http,
            v.agent.host.hostname,
            lambda d: d["availability"] == "failed",
            "the frozen host declared failed despite the attacker's datagrams",
        )
        assert doc["availability"] == "failed"
    finally:
        attacker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attacker


async def refused(v: Victim, reason: str) -> float:
    text = (await v.http.get("/metrics")).text
    prefix = f'roost_heartbeats_refused_total{{reason="{reason}"}}'
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


def site_key(mac: str) -> bytes:
    """The host's key as the enrolment authority (who holds the site secret) derives it."""
    secret = bytes.fromhex(Path(os.environ[SECRET_ENV]).read_text().strip())
    return hmac.digest(secret, b"roost-heartbeat" + bytes.fromhex(mac.replace(":", "")), "sha256")


async def test_replayed_heartbeats_keep_no_frozen_host_alive(stack, tmp_path):
    async with victim(stack, tmp_path) as v:
        capture = list(v.relay.captured)

        def replay(n: int) -> bytes:
            return capture[n % len(capture)]

        # From the agent's own address: only the replay checks can tell these apart.
        await declared_failed(v, replay, v.agent.host.ip)
        assert await eventually(lambda: refused(v, "replay"), what="replays counted") > 0


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "guessed-key"])
async def test_heartbeats_forged_without_the_hosts_key_keep_no_frozen_host_alive(
    stack, tmp_path, signed
):
    async with victim(stack, tmp_path) as v:
        wrong = os.urandom(32)
        boot = str(uuid.uuid4())

        def forge(n: int) -> bytes:
            hb = Heartbeat(
                mac=v.agent.mac,
                seq=time.monotonic_ns(),
                sent_ns=time.time_ns(),
                boot_id=boot if n % 2 else str(uuid.uuid4()),
                kind=Kind.periodic,
            )
            return encode(hb, wrong if signed else None)

        await declared_failed(v, forge, v.agent.host.ip)
        reason = "bad-signature" if signed else "unsigned"
        assert await eventually(lambda: refused(v, reason), what=f"{reason} counted") > 0


async def test_heartbeats_from_another_address_keep_no_frozen_host_alive(stack, tmp_path):
    async with victim(stack, tmp_path) as v:
        last = decode(v.relay.captured[-1])
        key = site_key(v.agent.mac)

        def forge(n: int) -> bytes:
            # The current boot, newer sequence numbers, the right key: only the address is off.
            return encode(replace(last, seq=time.monotonic_ns(), sent_ns=time.time_ns()), key)

        assert v.agent.host.ip != "127.0.0.1"
        await declared_failed(v, forge, "127.0.0.1")
        assert await eventually(lambda: refused(v, "source"), what="wrong sources counted") > 0
