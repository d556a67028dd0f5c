"""The service service's end of the service link (:mod:`roost_shared.smlink`).

Agents holding activity leases say hello on UDP (port ``ROOST_SM_LINK_PORT``, 8198) and on the
bus (``roost.sm``, key ``sm.hello``); each hello is answered on its own path with the host's
held leases (:meth:`Controller.grants_for`), which is how an active keeps its activity.

Per host and path the time of the last hello is kept; a path silent for ``path_timeout_s``
**while the other path still talks** raises **400.005** (communication failure, entity
``host=<name>.path=<udp|bus>``), cleared when hellos come back on it. Nothing else changes: no
failover, no lease is withheld (grants still flow on the path that works). When *every* path
to a host is silent this link decides nothing: the host service's failure decision (and its
fencing) does, and the controller acts on ``host.state.changed``. A host silent on both paths for
``forget_s`` is forgotten (its 400.005s cleared: it stopped holding leases, or its host failed
and the host service's alarms say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from roost_service import alarms
from roost_shared.agentbus import agent_id, sender_id
from roost_shared.bus import EVENTS_EXCHANGE, Bus
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.outbox import Outbox
from roost_shared.smlink import (
    HELLO_KEY,
    LINK_TTL_MS,
    SM_EXCHANGE,
    BadLinkMessage,
    Grant,
    Lease,
    agent_link_key,
    decode_hello,
    encode,
)

log = logging.getLogger(__name__)

PATHS = ("udp", "bus")
SOURCE = "roost/service"


@dataclass
class _Peer:
    mac: str
    heard: dict[str, float] = field(default_factory=dict)  # path -> monotonic
    first: float = field(default_factory=time.monotonic)


class _Hellos(asyncio.DatagramProtocol):
    def __init__(self, link: LinkServer) -> None:
        self.link = link
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.link.answer(data, "udp")
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer[0], addr)


@dataclass
class LinkServer:
    """Answers hellos with grants; watches each path; raises and clears 400.005."""

    bus: Bus
    db: Database
    outbox: Outbox
    grants_for: Callable[[str], list[Lease]]
    bind_host: str = "127.0.0.1"
    port: int = 8198
    path_timeout_s: float = 3.0
    forget_s: float = 10.0
    peers: dict[str, _Peer] = field(default_factory=dict)  # by hostname
    raised: set[tuple[str, str]] = field(default_factory=set)  # (host, path)
    received: dict[str, int] = field(default_factory=lambda: {"udp": 0, "bus": 0})
    rejected: int = 0
    _udp: _Hellos | None = None
    _channel: AbstractChannel | None = None
    _exchange: AbstractExchange | None = None

    async def start(self) -> None:
        """Bind the UDP port and consume bus hellos. Whatever it got before failing or being
        cancelled (a leader term that ends while it starts) is released by :meth:`stop`, which
        the caller must always run after it: a socket left bound would keep this replica from
        ever binding the port again on its next term."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.bind_host, self.port))
            self.port = sock.getsockname()[1]
            _, self._udp = await loop.create_datagram_endpoint(lambda: _Hellos(self), sock=sock)
        except BaseException:
            sock.close()  # the transport, if any was made, owns it: closing twice is harmless
            raise
        assert self.bus.connection is not None
        # Held before it opens, so that stop() closes it even if this start is cancelled now.
        channel = self._channel = self.bus.connection.channel(publisher_confirms=False)
        await channel
        self._exchange = await channel.declare_exchange(
            SM_EXCHANGE, ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(
            "",
            exclusive=True,
            auto_delete=True,
            arguments={"x-message-ttl": LINK_TTL_MS, "x-max-length": 10_000},
        )
        await queue.bind(self._exchange, HELLO_KEY)
        await queue.consume(self._on_bus, no_ack=True)
        log.info("service link: UDP %s:%d and the bus (%s)", self.bind_host, self.port, queue.name)

    async def stop(self) -> None:
        """Release what :meth:`start` got, however far it went; safe to call again."""
        udp, self._udp = self._udp, None
        if udp is not None and udp.transport is not None:
            udp.transport.close()
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)

    def answer(self, data: bytes, path: str) -> tuple[bytes, str] | None:
        """Record a hello heard on ``path``: (the grant to send back, the sender's MAC), or
        None if it cannot be decoded (counted)."""
        try:
            hello = decode_hello(data)
        except BadLinkMessage:
            self.rejected += 1
            return None
        self.received[path] += 1
        now = time.monotonic()
        peer = self.peers.get(hello.host)
        if peer is None or peer.mac != hello.mac or self._silent(peer, now):
            # New, or back after every path was silent (it held no lease meanwhile, or it
            # restarted): each path starts afresh, the others get their grace again.
            peer = self.peers[hello.host] = _Peer(hello.mac, first=now)
        peer.heard[path] = now
        grant = Grant(seq=hello.seq, path=hello.path, leases=self.grants_for(hello.host))
        return encode(grant), hello.mac

    async def _on_bus(self, message: AbstractIncomingMessage) -> None:
        sender = sender_id(message.exchange)
        if sender is not None and _claimed(message.body) != sender:
            # Through an agent's own exchange (per-host credentials) only its own host speaks.
            self.rejected += 1
            log.warning("ignored a bus hello from agent %s for another host", sender)
            return
        answer = self.answer(message.body, "bus")
        if answer is None or self._exchange is None:
            return
        reply, peer_mac = answer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._exchange.publish(
                    Message(
                        reply,
                        delivery_mode=DeliveryMode.NOT_PERSISTENT,
                        expiration=LINK_TTL_MS / 1000,
                    ),
                    agent_link_key(peer_mac),
                ),
                0.5,
            )

    # Path watch --------------------------------------------------------------------------------

    def _silent(self, peer: _Peer, now: float) -> bool:
        """True if no path of ``peer`` was heard within the path timeout."""
        return all(now - peer.heard.get(p, peer.first) > self.path_timeout_s for p in PATHS)

    def wanted(self, now: float | None = None) -> set[tuple[str, str]]:
        """(host, path) pairs whose path is silent while the host's other path talks."""
        now = time.monotonic() if now is None else now
        out: set[tuple[str, str]] = set()
        for host, peer in self.peers.items():
            # A path never heard counts from the host's first hello (grace for a new peer).
            alive = {p for p in PATHS if now - peer.heard.get(p, peer.first) <= self.path_timeout_s}
            if alive and len(alive) < len(PATHS):
                out |= {(host, p) for p in PATHS if p not in alive}
        return out

    async def watch(self, every_s: float = 0.5) -> None:
        """Raise and clear 400.005 as paths go silent and come back (runs for the app's life)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service link check failed")

    async def _check(self) -> None:
        now = time.monotonic()
        for host, peer in list(self.peers.items()):
            if all(now - peer.heard.get(p, peer.first) > self.forget_s for p in PATHS):
                del self.peers[host]
        wanted = self.wanted(now)
        raise_ = wanted - self.raised
        clear = self.raised - wanted
        if not raise_ and not clear:
            return
        stamp = utcnow_ms()
        envelopes = [
            Envelope.of(alarms.path_lost(h, p, self.path_timeout_s, stamp), source=SOURCE)
            for h, p in sorted(raise_)
        ] + [Envelope.of(alarms.path_back(h, p, stamp), source=SOURCE) for h, p in sorted(clear)]
        for h, p in sorted(raise_):
            log.warning("service link: path %s to %s silent; 400.005 raised", p, h)
        for h, p in sorted(clear):
            log.info("service link: path %s to %s back (or host gone); 400.005 cleared", p, h)

        async def work(session: Session) -> None:
            await self.outbox.add_to(session, [(e, EVENTS_EXCHANGE, None) for e in envelopes])

        await self.db.in_transaction(work)
        self.outbox.wake()
        self.raised = wanted


def _claimed(data: bytes) -> str | None:
    """The agent id a hello speaks for, or None if it is not a hello."""
    try:
        return agent_id(decode_hello(data).mac)
    except BadLinkMessage:
        return None
