"""The leader's UDP links (the host service's heartbeats, the service service's link) across
leader terms: a term that ends at any moment of the link's start, or while it runs, releases the
UDP port and the bus channel, so the next term binds the port again.

Found at 200 simulated agents: lease renewals timed out under load, a term ended while the
service link was starting, its socket stayed bound, and every later term failed to bind the
port ("Address already in use"): no service group was ever placed again."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from roost_host.guard import HeartbeatGuard
from roost_host.heartbeat import HeartbeatLink
from roost_service.link import LinkServer
from roost_shared.bus import Bus
from roost_shared.leader import running
from roost_shared.metrics import Metrics
from roost_sim.ports import free_udp_port
from tests.support.waiting import eventually

#: Cancel after 0, 0.5, 1, ... 14.5 ms: a start on loopback takes a few ms, so the term ends
#: before the bind, between the bind and the channel, while the channel opens, while the queue
#: is declared, and after the link is up.
CANCEL_AFTER_S = [i * 0.0005 for i in range(30)]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
            return False
    return True


def open_channels(bus: Bus) -> int:
    assert bus.connection is not None
    channels = bus.connection.transport.connection.channels  # type: ignore[union-attr]
    return sum(1 for ch in channels.values() if ch is not None and not ch.is_closed)


async def one_term(link: Any, after_s: float) -> None:
    """A leader term that holds the running link and ends ``after_s`` after it began."""

    async def term() -> None:
        async with running(link):
            await asyncio.Event().wait()

    task = asyncio.create_task(term())
    await asyncio.sleep(after_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def check_terms(link: Any, bus: Bus, port: int) -> None:
    baseline = open_channels(bus)
    for after_s in CANCEL_AFTER_S:
        await one_term(link, after_s)

        await eventually(
            lambda: port_free(port) and open_channels(bus) == baseline,
            timeout=2,
            what=f"port and channel released ({after_s} s)",
        )
    # And the next term still gets the port.
    async with running(link):
        assert not port_free(port), "the link holds its port while it runs"
        assert open_channels(bus) == baseline + 1
    await eventually(lambda: port_free(port), timeout=2, what="port released after a full term")


async def test_the_service_link_releases_its_port_whenever_a_term_ends(stack):
    bus = await stack.bus()
    port = free_udp_port()
    none: Any = None
    link = LinkServer(bus, none, none, lambda host: [], bind_host="127.0.0.1", port=port)
    await check_terms(link, bus, port)


async def test_the_heartbeat_link_releases_its_port_whenever_a_term_ends(stack):
    bus = await stack.bus()
    port = free_udp_port()
    link = HeartbeatLink(
        bind_host="127.0.0.1",
        port=port,
        guard=HeartbeatGuard(None, Metrics("test-heartbeat-guard")),
        bus=bus,
        metrics=Metrics("test-heartbeat-link"),
        on_heartbeat=lambda *args: None,
    )
    await check_terms(link, bus, port)
