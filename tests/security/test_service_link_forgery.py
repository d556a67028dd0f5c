"""Attacks on the service link, over real UDP against the real service service.

The test plays one enrolled host, ``worker-0``, that talks on UDP only (its bus path is silent):
the service must raise 400.005 for its bus path. Its hellos are sent in both the plain form
and the signed one (``"RSL1" | MAC | HMAC-SHA256(link key, JSON)[:16] | JSON``, the link key
derived from the site secret as enrolment derives it), so the same test runs against a service
that checks signatures and one that does not. The attacker meanwhile sends:

* malformed hellos (a host name no alarm can carry), unsigned and signed with a key of its own
  host: 400.005 handling must go on for ``worker-0``;
* a flood of hellos for thousands of invented hosts (unsigned, and signed with guessed keys),
  plus validly signed ones for more hosts than the peer table holds: the table stays within
  its bound and no invented host gets an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.events import Listener
from tests.support.stack import SECRET_ENV
from tests.support.waiting import eventually

LINK_FAST = {"ROOST_SM_LINK_PATH_TIMEOUT_S": "1"}
ALARM = "400.005"


def link_key(mac: str) -> bytes:
    secret = bytes.fromhex(Path(os.environ[SECRET_ENV]).read_text().strip())
    raw = bytes.fromhex(mac.replace(":", ""))
    host = hmac.digest(secret, b"roost-heartbeat" + raw, "sha256")
    return hmac.digest(host, b"roost-sm-link", "sha256")


def hello(mac: str, host: str, boot: str, key: bytes | None) -> bytes:
    body = json.dumps(
        {
            "t": "hello",
            "mac": mac,
            "host": host,
            "seq": time.monotonic_ns(),
            "path": "udp",
            "boot": boot,
            "ts": time.time_ns(),
        }
    ).encode()
    if key is None:
        return body
    tag = hmac.digest(key, body, "sha256")[:16]
    return b"RSL1" + bytes.fromhex(mac.replace(":", "")) + tag + body


def random_mac() -> str:
    return "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))


class Host:
    """An enrolled host talking on UDP only: both forms of each hello."""

    def __init__(self, mac: str, name: str) -> None:
        self.mac, self.name, self.boot = mac, name, str(uuid.uuid4())
        self.key = link_key(mac)

    def hellos(self) -> list[bytes]:
        return [
            hello(self.mac, self.name, self.boot, None),
            hello(self.mac, self.name, self.boot, self.key),
        ]


@contextlib.asynccontextmanager
async def sending(target: tuple[str, int], make, every_s: float = 0.2) -> AsyncIterator[None]:
    """``make()`` (a list of datagrams) sent every ``every_s`` until the block ends."""

    async def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            while True:
                for data in make():
                    with contextlib.suppress(BlockingIOError):
                        s.sendto(data, target)
                await asyncio.sleep(every_s)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def raised_for(events: Listener) -> set[str]:
    """Hosts with a 400.005 raised (``host=<name>.path=<p>``)."""
    return {
        e["data"]["entity_instance_id"].split(".path=")[0].removeprefix("host=")
        for e in events.of("fault.alarm.set")
        if e["data"].get("alarm_id") == ALARM
    }


async def metric(url: str, name: str, **labels: str) -> float | None:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    found = None
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or (
            head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())
        ):
            found = (found or 0.0) + float(value)
    return found


async def start(stack, **env: str) -> tuple[Any, tuple[str, int], Listener]:
    svc = stack.start("service", **{**LINK_FAST, **env})
    bus = await stack.bus()
    events = await Listener.on(bus, "fault.alarm.*")
    return svc, ("127.0.0.1", int(svc.env["ROOST_SM_LINK_PORT"])), events


async def test_a_malformed_hello_does_not_stop_400_005_for_the_other_hosts(stack):
    svc, target, events = await start(stack)
    honest = Host("02:00:00:00:07:01", "worker-0")
    insider = "02:00:00:00:07:02"  # a compromised host: it holds its own key
    bad_names = ["a" * 300, "worker 1; drop", "WORKER-1", "-"]

    def malformed() -> list[bytes]:
        boot = "b"
        out = []
        for name in bad_names:
            out.append(hello(insider, name, boot, None))
            out.append(hello(insider, name, boot, link_key(insider)))
        return out

    async with sending(target, malformed), sending(target, honest.hellos):
        await eventually(
            lambda: "worker-0" in raised_for(events),
            timeout=20,
            what="400.005 for worker-0's silent bus path despite the malformed hellos",
        )
    refused = await metric(svc.url, "roost_sm_link_refused_total", reason="malformed")
    assert refused and refused > 0, "malformed hellos are counted"
    assert raised_for(events) == {"worker-0"}


async def test_a_hello_flood_for_random_hosts_does_not_grow_the_peer_table(stack):
    bound = 50
    svc, target, events = await start(stack, ROOST_SM_LINK_MAX_PEERS=str(bound))
    honest = Host("02:00:00:00:08:01", "worker-0")
    # Enrolled hosts beyond the bound (validly signed: as if the whole site spoke at once).
    enrolled = [Host(f"02:00:00:00:09:{i:02x}", f"enrolled-{i}") for i in range(bound * 2)]
    boot = str(uuid.uuid4())

    def flood() -> list[bytes]:
        out = []
        for _ in range(500):
            mac, name = random_mac(), f"flood-{random.randrange(1 << 30)}"
            out.append(hello(mac, name, boot, None))
            out.append(hello(mac, name, boot, os.urandom(32)))
        return out

    def enrolled_hellos() -> list[bytes]:
        return [data for h in enrolled for data in h.hellos()]

    async with sending(target, honest.hellos):
        await eventually(lambda: "worker-0" in raised_for(events), timeout=20, what="worker-0")
        async with sending(target, flood, every_s=0.05), sending(target, enrolled_hellos):
            sizes: list[float | None] = []
            deadline = time.monotonic() + 4  # well past the 1 s path timeout
            while time.monotonic() < deadline:
                sizes.append(await metric(svc.url, "roost_sm_link_peers"))
                await asyncio.sleep(0.2)
    alarmed = raised_for(events)
    assert len(alarmed) <= bound, f"{len(alarmed)} hosts got a 400.005; the table holds {bound}"
    assert not any(h.startswith("flood-") for h in alarmed), "invented hosts alarmed"
    assert sizes and all(n is not None for n in sizes), "the peer table's size is exported"
    assert max(n or 0 for n in sizes) <= bound, sizes
    full = await metric(svc.url, "roost_sm_link_refused_total", reason="table-full")
    assert full and full > 0, "hellos beyond the bound are refused and counted"
    for reason in ("unsigned", "bad-signature"):
        n = await metric(svc.url, "roost_sm_link_refused_total", reason=reason)
        assert n and n > 0, reason
