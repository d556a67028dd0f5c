"""The agent's end of the service link (:mod:`roost_shared.smlink`): hellos out, grants in.

While this host holds any activity lease (:meth:`Instances.holds_leases`) the agent says hello
to the service service every ``period_ms`` over UDP and every ``bus_period_ms`` over the bus;
each grant that comes back, on either path, extends the leases it lists
(:meth:`Instances.grant`). With no lease held it sends nothing: a host without active
instances costs the link nothing.

Both paths are independent: the UDP socket needs no broker, the bus side no UDP route; either
one alone keeps the leases alive.

Hellos are signed with this host's link key and carry its boot id, a sequence number that
increases across restarts within a boot (``max(seq + 1, CLOCK_MONOTONIC ns)``) and the wall
clock. A grant is believed only signed with the same key and newer than the last one believed
on its path (a replayed grant is dropped); refusals are counted in ``rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from roost_agent.heartbeat import RateLimitedLog, parse_addr
from roost_agent.instances import Instances
from roost_shared.agentbus import AgentBusNames
from roost_shared.smlink import (
    HELLO_KEY,
    LINK_TTL_MS,
    SM_EXCHANGE,
    BadLinkMessage,
    Hello,
    agent_link_key,
    decode_grant,
    encode,
)

log = logging.getLogger(__name__)


class _Grants(asyncio.DatagramProtocol):
    def __init__(self, link: LinkClient) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.received(data, "udp")

    def error_received(self, exc: Exception) -> None:
        self.link.udp_errors.failed(exc)


class LinkClient:
    """Hellos on both paths while leases are held; grants handed to :class:`Instances`."""

    def __init__(
        self,
        instances: Instances,
        *,
        mac: str,
        hostname: str,
        addr: str,
        period_ms: int = 200,
        bus_period_ms: int = 1000,
        bind_ip: str | None = None,
        names: AgentBusNames | None = None,
        key: bytes | None = None,
        boot_id: str = "",
    ) -> None:
        """``names``: per-host credentials (hellos through the agent's own exchange, grants
        from its inbound one); None: the shared ``roost.sm`` exchange. ``key``: this host's
        link key (None: unsigned, insecure)."""
        self.instances = instances
        self.names = names
        self.mac, self.hostname = mac, hostname
        self.addr = parse_addr(addr, 8198)
        self.period_s = period_ms / 1000
        self.bus_every = max(1, round(bus_period_ms / period_ms))
        self.bind_ip = bind_ip
        self.key = key
        self.boot_id = boot_id or str(uuid.uuid4())
        self.seq = 0
        self._granted = {"udp": 0, "bus": 0}  # seq of the last grant believed, per path
        self.sent = {"udp": 0, "bus": 0}
        self.grants = {"udp": 0, "bus": 0}
        self.rejected = 0
        self.udp_errors = RateLimitedLog("service link (udp)")
        self.refusals = RateLimitedLog("service link grants refused")
        self.bus_errors = RateLimitedLog("service link (bus)")
        self._transport: asyncio.DatagramTransport | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, connection: AbstractRobustConnection | None) -> None:
        """Open the UDP socket (and the bus side when ``connection`` is given); start talking."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if self.bind_ip:
            sock.bind((self.bind_ip, 0))
        sock.setblocking(False)
        sock.connect(self.addr)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Grants(self), sock=sock)
        if connection is not None:
            await self.attach(connection)
        self._task = loop.create_task(self._run(), name="service-link")

    async def attach(self, connection: AbstractRobustConnection) -> None:
        """The bus path: a no-confirm channel, an exclusive queue for this agent's grants."""
        channel = await connection.channel(publisher_confirms=False)
        if self.names is None:
            self._exchange = await channel.declare_exchange(
                SM_EXCHANGE, ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(SM_EXCHANGE, routing_key=agent_link_key(self.mac))
        else:
            self._exchange = await channel.get_exchange(self.names.exchange, ensure=True)
            name = self.names.private_queue("link", uuid.uuid4().hex[:12])
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(self.names.inbound, routing_key=agent_link_key(self.mac))

        async def deliver(message: AbstractIncomingMessage) -> None:
            self.received(message.body, "bus")

        await queue.consume(deliver, no_ack=True)
        self._channel = channel

    def received(self, data: bytes, path: str) -> None:
        try:
            grant = decode_grant(data, self.key)
        except BadLinkMessage as exc:
            self.rejected += 1
            self.refusals.failed(exc)
            return
        if grant.seq <= self._granted[path] or grant.seq > self.seq:
            self.rejected += 1  # a replayed grant, or one for a hello never sent
            self.refusals.failed(BadLinkMessage(f"grant {grant.seq} on {path} is not new"))
            return
        self._granted[path] = grant.seq
        self.grants[path] += 1
        self.instances.grant(grant.leases)

    async def _run(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.period_s)
            if not self.instances.holds_leases():
                tick = 0  # the first hello after a pause goes on both paths
                continue
            self.seq = max(self.seq + 1, time.monotonic_ns())
            self._send_udp()
            if tick % self.bus_every == 0:
                await self._send_bus()
            tick += 1

    def _send_udp(self) -> None:
        if self._transport is None:
            return
        try:
            self._transport.sendto(self._hello("udp"))
            self.sent["udp"] += 1
        except OSError as exc:
            self.udp_errors.failed(exc)

    async def _send_bus(self) -> None:
        if self._exchange is None:
            return
        message = Message(
            self._hello("bus"),
            delivery_mode=DeliveryMode.NOT_PERSISTENT,
            expiration=LINK_TTL_MS / 1000,
        )
        try:
            # A robust channel waits for a reconnect; a hello must not wait that long.
            await asyncio.wait_for(self._exchange.publish(message, HELLO_KEY), 0.5)
            self.sent["bus"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.bus_errors.failed(exc)

    def _hello(self, path: str) -> bytes:
        hello = Hello(
            mac=self.mac,
            host=self.hostname,
            seq=self.seq,
            path=path,  # type: ignore[arg-type]
            boot=self.boot_id,
            ts=time.time_ns(),
        )
        return encode(hello, self.key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), 5)
