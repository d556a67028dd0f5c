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

Which hellos are believed: signed with the link key of the MAC they name (derived from the
site secret, :mod:`roost_shared.hostkeys`), with a valid host name, and new (boot id and
sequence, :mod:`roost_shared.replay`). The rest are dropped and counted by reason
(``roost_sm_link_refused_total``). Peers are kept by MAC, so a host's key speaks for one peer
only, and the table holds at most ``max_peers`` (new ones beyond it are refused and counted):
a flood of hellos for invented hosts cannot grow it. One peer's alarm that cannot be built
never stops the others' (each is built on its own, a failure logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from roost_service import alarms
from roost_shared.agentbus import agent_id, sender_id
from roost_shared.bus import EVENTS_EXCHANGE, Bus
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.heartbeat import boot_bytes
from roost_shared.hostkeys import host_key, link_key
from roost_shared.metrics import Metrics
from roost_shared.outbox import Outbox
from roost_shared.replay import Refusal, Stream
from roost_shared.smlink import (
    HELLO_KEY,
    LINK_TTL_MS,
    SM_EXCHANGE,
    BadLinkMessage,
    Grant,
    Hello,
    Lease,
    agent_link_key,
    decode_hello,
    encode,
    signed_by,
)

log = logging.getLogger(__name__)

PATHS = ("udp", "bus")
SOURCE = "roost/service"
#: Refusals of each reason are logged at most this often.
LOG_EVERY_S = 60.0
REASONS = frozenset(r.value for r in Refusal)


@dataclass
class _Peer:
    host: str
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
    #: The site secret (None: hellos unsigned, ``heartbeat_insecure``).
    secret: bytes | None = None
    max_peers: int = 10_000
    boot_window_s: float = 60.0
    metrics: Metrics | None = None
    peers: dict[str, _Peer] = field(default_factory=dict)  # by MAC
    #: Replay state by MAC: outlives a forgotten peer (bounded like the peers).
    streams: dict[str, Stream] = field(default_factory=dict)
    raised: set[tuple[str, str]] = field(default_factory=set)  # (host, path)
    received: dict[str, int] = field(default_factory=lambda: {"udp": 0, "bus": 0})
    rejected: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by reason
    _logged_at: dict[str, float] = field(default_factory=dict)
    _counter: Any = None
    _peers_gauge: Any = None
    _udp: _Hellos | None = None
    _channel: AbstractChannel | None = None
    _exchange: AbstractExchange | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None:
            self._counter = self.metrics.counter(
                "sm_link_refused",
                "Service-link hellos dropped, by reason: malformed (or an invalid host name), "
                "unsigned, bad-signature, replay, old-boot, stale, table-full.",
                ["reason"],
            )
            self._peers_gauge = self.metrics.gauge(
                "sm_link_peers", "Hosts in the service link's peer table (bounded)."
            )
            self._alarm_errors = self.metrics.counter(
                "sm_link_alarm_errors", "400.005 alarms that could not be built (skipped)."
            )

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
        None if it is not to be believed (counted by reason)."""
        try:
            hello, key = self._open(data)
        except BadLinkMessage as exc:
            return self._refuse(str(exc.args[0]) if exc.args else "malformed", data)
        stream = self.streams.get(hello.mac)
        fresh = stream is None
        if fresh:
            if len(self.streams) >= self.max_peers and not self._evict():
                return self._refuse(Refusal.table_full.value, data)
            stream = Stream()
        refusal = stream.check(
            boot_bytes(hello.boot),
            hello.seq,
            path == "bus",
            hello.ts,
            time.time_ns(),
            int(self.boot_window_s * 1e9),
        )
        if refusal is not None:
            return self._refuse(refusal.value, data)
        if fresh:
            self.streams[hello.mac] = stream
        self.received[path] += 1
        now = time.monotonic()
        peer = self.peers.get(hello.mac)
        if peer is None or peer.host != hello.host or self._silent(peer, now):
            # New, or back after every path was silent (it held no lease meanwhile, or it
            # restarted): each path starts afresh, the others get their grace again.
            peer = self.peers[hello.mac] = _Peer(hello.host, first=now)
            if self._peers_gauge is not None:
                self._peers_gauge.set(len(self.peers))
        peer.heard[path] = now
        grant = Grant(seq=hello.seq, path=hello.path, leases=self.grants_for(hello.host))
        return encode(grant, key, hello.mac), hello.mac

    def _evict(self) -> bool:
        """Make room for one stream: drop the oldest of a host that is no peer any more (its
        replay state is what a replay after ``forget_s`` meets; the clock window still holds).
        False when every stream belongs to a current peer."""
        for mac in self.streams:
            if mac not in self.peers:
                del self.streams[mac]
                return True
        return False

    def _open(self, data: bytes) -> tuple[Hello, bytes | None]:
        """The hello in ``data`` and the link key it was signed with (None: insecure)."""
        if self.secret is None:
            return decode_hello(data), None
        signer = signed_by(data)
        if signer is None:
            raise BadLinkMessage(Refusal.unsigned.value)
        key = link_key(host_key(self.secret, signer))
        try:
            return decode_hello(data, key), key
        except BadLinkMessage as exc:
            reason = str(exc.args[0]) if exc.args else ""
            raise BadLinkMessage(
                Refusal.bad_signature.value if "signature" in reason else Refusal.malformed.value
            ) from None

    def _refuse(self, reason: str, data: bytes) -> None:
        if reason not in REASONS:
            reason = Refusal.malformed.value
        self.rejected += 1
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._counter is not None:
            self._counter.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[reason] = now
            signer = signed_by(data)
            who = f" signed by {signer.hex(':')}" if signer else ""
            log.warning("service link: dropped a hello (%s)%s", reason, who)
        return None

    async def _on_bus(self, message: AbstractIncomingMessage) -> None:
        sender = sender_id(message.exchange)
        if sender is not None and _claimed(message.body, self.secret is None) != sender:
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
        for peer in self.peers.values():
            # A path never heard counts from the host's first hello (grace for a new peer).
            alive = {p for p in PATHS if now - peer.heard.get(p, peer.first) <= self.path_timeout_s}
            if alive and len(alive) < len(PATHS):
                out |= {(peer.host, p) for p in PATHS if p not in alive}
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
        for mac, peer in list(self.peers.items()):
            if all(now - peer.heard.get(p, peer.first) > self.forget_s for p in PATHS):
                del self.peers[mac]
        if self._peers_gauge is not None:
            self._peers_gauge.set(len(self.peers))
        wanted = self.wanted(now)
        raise_ = wanted - self.raised
        clear = self.raised - wanted
        if not raise_ and not clear:
            return
        stamp = utcnow_ms()
        envelopes: list[Envelope] = []
        for h, p in sorted(raise_):
            if self._build(envelopes, partial(alarms.path_lost, h, p, self.path_timeout_s, stamp)):
                log.warning("service link: path %s to %s silent; 400.005 raised", p, h)
            else:
                wanted.discard((h, p))  # never raised: not to be cleared either
        for h, p in sorted(clear):
            if self._build(envelopes, partial(alarms.path_back, h, p, stamp)):
                log.info("service link: path %s to %s back (or host gone); 400.005 cleared", p, h)

        async def work(session: Session) -> None:
            await self.outbox.add_to(session, [(e, EVENTS_EXCHANGE, None) for e in envelopes])

        await self.db.in_transaction(work)
        self.outbox.wake()
        self.raised = wanted

    def _build(self, envelopes: list[Envelope], alarm: Callable[[], Any]) -> bool:
        """Append one alarm's envelope; False (logged, counted) if it cannot be built."""
        try:
            envelopes.append(Envelope.of(alarm(), source=SOURCE))
            return True
        except Exception:
            log.exception("service link: could not build a 400.005 alarm; skipped")
            if self.metrics is not None:
                self._alarm_errors.inc()
            return False


def _claimed(data: bytes, unsigned: bool) -> str | None:
    """The agent id a hello speaks for, or None if it is not a hello. A signed hello speaks for
    the MAC it is signed for (checked against the JSON when it is opened)."""
    signer = signed_by(data)
    if signer is not None:
        return signer.hex()
    if not unsigned:
        return None
    try:
        return agent_id(decode_hello(data).mac)
    except BadLinkMessage:
        return None
