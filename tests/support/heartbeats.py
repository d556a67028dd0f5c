"""Receiving heartbeats in tests: a UDP listener and a bus listener that record what arrives."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aio_pika import ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from roost_shared.bus import Bus
from roost_shared.heartbeat import (
    HEARTBEAT_EXCHANGE,
    HEARTBEAT_KEY,
    Heartbeat,
    Kind,
    decode,
    probe_body,
    probe_key,
)


@dataclass
class Got:
    """One received heartbeat: when (monotonic), from where (UDP source address) and what."""

    at: float
    hb: Heartbeat
    source: str = ""


@dataclass
class Received:
    got: list[Got] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def of(self, mac: str, kind: Kind | None = None, since: float = 0.0) -> list[Got]:
        return [
            g
            for g in self.got
            if g.hb.mac == mac and g.at >= since and (kind is None or g.hb.kind == kind)
        ]

    def last_at(self, mac: str) -> float:
        mine = self.of(mac)
        return mine[-1].at if mine else 0.0


class UdpHeartbeats(asyncio.DatagramProtocol, Received):
    """Listens on 127.0.0.1:``port`` (0: a free one) and decodes (unsigned check) each datagram."""

    def __init__(self) -> None:
        Received.__init__(self)
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def listen(cls, port: int = 0) -> UdpHeartbeats:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", port))
        proto.port = transport.get_extra_info("sockname")[1]
        return proto

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.raw.append(data)
        self.got.append(Got(time.monotonic(), decode(data), addr[0]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class BusHeartbeats(Received):
    """A queue of our own bound to ``roost.heartbeat`` / ``heartbeat``; can send probes."""

    def __init__(self, channel: AbstractChannel) -> None:
        super().__init__()
        self.channel = channel

    @classmethod
    async def listen(cls, bus: Bus) -> BusHeartbeats:
        assert bus.connection is not None
        channel = await bus.connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(
            HEARTBEAT_EXCHANGE, ExchangeType.DIRECT, durable=True
        )
        me = cls(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=HEARTBEAT_KEY)

        async def on_message(message: AbstractIncomingMessage) -> None:
            me.raw.append(message.body)
            me.got.append(Got(time.monotonic(), decode(message.body)))

        await queue.consume(on_message, no_ack=True)
        return me

    async def probe(self, mac: str, number: int) -> float:
        """Publish probe ``number`` to the agent ``mac``; returns when (monotonic)."""
        exchange = await self.channel.get_exchange(HEARTBEAT_EXCHANGE)
        sent = time.monotonic()
        await exchange.publish(Message(probe_body(number)), routing_key=probe_key(mac))
        return sent
