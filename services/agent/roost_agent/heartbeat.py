"""Heartbeats from an agent to the host service, on two independent paths.

Wire format, names and the reasons for two paths: :mod:`roost_shared.heartbeat`.

* :class:`HeartbeatSender` is one node: a UDP datagram every ``period`` (drift-free schedule,
  missed slots skipped rather than sent in a burst), and, once attached to a
  :class:`HeartbeatBus`, a passive bus heartbeat every ``bus_period`` and an answer to each probe.
  UDP does not depend on the broker at all: it starts before the agent connects and keeps going
  while the broker is away.
* :class:`HeartbeatBus` is one per process and connection: a channel WITHOUT publisher confirms
  (a heartbeat has no value once late, so nobody waits for a confirm), the ``roost.heartbeat``
  exchange, and one exclusive auto-delete probe queue per sender. Many senders (the 1,000-host
  benchmark, ``roost_sim.fleet.run_in_process``) share it. Its channel and queues are aio-pika
  robust objects: after a reconnect the exchange, every probe queue (aio-pika names them
  ``amq_<uuid>`` on the client side precisely so it can re-declare them), their bindings and
  consumers come back by themselves.

Timers are ``loop.call_at`` callbacks, not tasks: a sender costs one timer handle per period and
no coroutine switch, which is what lets one process drive 1,000 senders at 10 Hz.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
import time
import uuid
import weakref
from collections.abc import Callable

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from roost_shared.agentbus import AgentBusNames
from roost_shared.heartbeat import (
    HEARTBEAT_EXCHANGE,
    HEARTBEAT_KEY,
    HEARTBEAT_TTL_MS,
    BadHeartbeat,
    Heartbeat,
    Kind,
    encode,
    probe_key,
    probe_number,
)

log = logging.getLogger(__name__)

#: A failing path is logged at most this often (a dead network must not flood the log).
LOG_EVERY_S = 60.0
#: Bus heartbeats waiting while the channel is busy; older ones are worthless, so dropped.
BUS_BACKLOG = 10_000


def parse_addr(addr: str, default_port: int = 8199) -> tuple[str, int]:
    """``"host:port"`` (or ``"host"``) → ``(host, port)``."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    return host.strip("[]"), int(port)


def is_local_address(ip: str | None) -> bool:
    """True if ``ip`` is an address of this machine (it can be bound). All of 127/8 is, which is
    how every simulated host gets a source address of its own."""
    if not ip:
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


class RateLimitedLog:
    """Counts failures and logs the first one of every ``every_s`` window with the count since."""

    def __init__(self, what: str, every_s: float = LOG_EVERY_S) -> None:
        self.what = what
        self.every_s = every_s
        self.count = 0
        self._logged_at = -math.inf
        self._unlogged = 0

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= self.every_s:
            log.warning("%s failing (%d since last said): %r", self.what, self._unlogged, exc)
            self._logged_at = now
            self._unlogged = 0


class HeartbeatBus:
    """The bus side of heartbeats for every sender of one process (one channel, no confirms)."""

    _by_connection: weakref.WeakKeyDictionary[AbstractRobustConnection, HeartbeatBus] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self, connection: AbstractRobustConnection, names: AgentBusNames | None = None
    ) -> None:
        """``names``: per-host credentials (publish through the agent's own exchange, bind
        probe queues to its inbound one); None: the shared ``roost.heartbeat``."""
        self.connection = connection
        self.names = names
        self.channel: AbstractRobustChannel | None = None
        self.exchange: AbstractExchange | None = None
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=BUS_BACKLOG)
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self.senders = 0
        self._tags: dict[str, str] = {}
        self.published = 0
        self.dropped = 0
        self.errors = RateLimitedLog("bus heartbeats")

    @classmethod
    async def shared(
        cls, connection: AbstractRobustConnection, names: AgentBusNames | None = None
    ) -> HeartbeatBus:
        """The process's HeartbeatBus on ``connection`` (made and opened at first use)."""
        hb_bus = cls._by_connection.get(connection)
        if hb_bus is None:
            hb_bus = cls._by_connection[connection] = cls(connection, names)
        await hb_bus.open()
        return hb_bus

    async def open(self) -> None:
        async with self._opening:
            if self.channel is not None:
                return
            channel = await self.connection.channel(publisher_confirms=False)
            if self.names is not None:  # passive: it may not declare, only publish there
                self.exchange = await channel.get_exchange(self.names.exchange, ensure=True)
            else:
                self.exchange = await channel.declare_exchange(
                    HEARTBEAT_EXCHANGE, ExchangeType.DIRECT, durable=True
                )
            self.channel = channel  # type: ignore[assignment]
            self._pump = asyncio.create_task(self._run(), name="heartbeat-bus")

    @property
    def connected(self) -> bool:
        return not self.connection.is_closed and self.connection.connected.is_set()

    def publish(self, body: bytes) -> None:
        """Queue one heartbeat for the bus, or drop it at once while the broker is away (it
        would be stale by the time the connection is back)."""
        if not self.connected:
            self.dropped += 1
            return
        if len(self._backlog) == self._backlog.maxlen:
            self.dropped += 1
        self._backlog.append(body)
        self._wake.set()

    async def _run(self) -> None:
        """Publish queued heartbeats one after another: a no-confirm publish is one write, and
        one pump task costs less than a task per heartbeat."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._backlog:
                body = self._backlog.popleft()
                if not self.connected:
                    self.dropped += 1 + len(self._backlog)
                    self._backlog.clear()
                    break
                try:
                    assert self.exchange is not None
                    # A robust channel waits for a reconnect; a heartbeat must not wait that long.
                    # Not mandatory: with no host service listening yet (starting, or between
                    # two leaders' terms) the broker drops it instead of returning it to a
                    # channel that has no use for it (aiormq logs each return as an error).
                    await asyncio.wait_for(
                        self.exchange.publish(_message(body), HEARTBEAT_KEY, mandatory=False), 1
                    )
                    self.published += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.errors.failed(exc)

    async def subscribe(self, mac: str, on_probe: Callable[[int], None]) -> AbstractQueue:
        """An exclusive auto-delete queue bound to ``probe.<mac hex>``, consumed without acks."""
        assert self.channel is not None

        async def deliver(message: AbstractIncomingMessage) -> None:
            try:
                on_probe(probe_number(message.body))
            except BadHeartbeat as exc:
                log.warning("ignored a malformed probe for %s: %s", mac, exc)

        if self.names is None:
            queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(HEARTBEAT_EXCHANGE, routing_key=probe_key(mac))
        else:
            # Named by us: its user may not declare the broker's amq.gen-* names.
            name = self.names.private_queue("probe", uuid.uuid4().hex[:12])
            queue = await self.channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(self.names.inbound, routing_key=probe_key(mac))
        self._tags[queue.name] = await queue.consume(deliver, no_ack=True)
        self.senders += 1
        return queue

    async def unsubscribe(self, queue: AbstractQueue) -> None:
        """Delete a sender's probe queue (and forget it, so a reconnect does not re-declare it);
        the last sender to leave closes the channel."""
        if self.channel is None:
            return
        self.senders -= 1
        with contextlib.suppress(Exception):
            # Cancel first: deleting a queue under its consumer makes the broker cancel it,
            # which aio-pika logs as a warning. Deleting a missing queue is not an error.
            await asyncio.wait_for(queue.cancel(self._tags.pop(queue.name, "")), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.queue_delete(queue.name), 5)
        if self.senders <= 0:
            await self.close()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.channel.close(), 5)
        self.channel = None
        if self._by_connection.get(self.connection) is self:
            del self._by_connection[self.connection]


def _message(body: bytes) -> Message:
    return Message(
        body,
        delivery_mode=DeliveryMode.NOT_PERSISTENT,
        expiration=HEARTBEAT_TTL_MS / 1000,  # aio-pika takes seconds and sends milliseconds
    )


class HeartbeatSender:
    """One node's heartbeats: UDP every ``period_ms``, the bus every ``bus_period_ms``, probes.

    ``seq`` increases with every message on either path: ``max(seq + 1, CLOCK_MONOTONIC
    ns)``, so the host service, which drops any message whose seq is not above the last one it
    accepted on that path from this boot, also accepts the heartbeats of an agent restarted
    within the same boot. ``key`` (this host's, :mod:`roost_shared.hostkeys`) signs them.
    """

    def __init__(
        self,
        mac: str,
        boot_id: str,
        *,
        addr: str = "127.0.0.1:8199",
        period_ms: int = 100,
        bus_period_ms: int = 5000,
        bind_ip: str | None = None,
        key: bytes | None = None,
        phase: float = 0.0,
    ) -> None:
        """``phase`` (0..1) delays the first beat by that fraction of a period: many senders in
        one process spread over the period instead of all firing on the same tick."""
        self.mac = mac
        self.boot_id = boot_id
        self.addr = parse_addr(addr)
        self.period = period_ms / 1000
        self.bus_period = bus_period_ms / 1000
        self.bind_ip = bind_ip
        self.key = key or None
        self.phase = phase
        self.seq = 0
        self.sent = 0
        self.skipped = 0
        self.probes = 0
        self.udp_errors = RateLimitedLog(f"UDP heartbeats of {mac} to {addr}")
        self._sock: socket.socket | None = None
        self._udp_timer: asyncio.TimerHandle | None = None
        self._bus_timer: asyncio.TimerHandle | None = None
        self._bus: HeartbeatBus | None = None
        self._queue: AbstractQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # UDP ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the socket and start sending datagrams (no broker needed)."""
        if self._sock is not None:
            return
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if self.bind_ip:
            # Bound, so per-host firewall rules (``ip saddr``) and the receiver see this node.
            sock.bind((self.bind_ip, 0))
        self._sock = sock
        self._start = self._loop.time() + self.phase * self.period
        self._slot = 0
        self._udp_timer = self._loop.call_at(self._start, self._beat)

    def _beat(self) -> None:
        assert self._loop is not None and self._sock is not None
        try:
            self._sock.sendto(self._encode(Kind.periodic, 0), self.addr)
            self.sent += 1
        except OSError as exc:  # EPERM from a firewall, unreachable, a full buffer: never fatal
            self.udp_errors.failed(exc)
        # Drift-free: slots at start + n·period. If the loop was late (or the process stopped),
        # go to the next slot in the future instead of catching up with a burst.
        now = self._loop.time()
        self._slot += 1
        due = self._start + self._slot * self.period
        if due <= now:
            behind = math.floor((now - self._start) / self.period) + 1
            self.skipped += behind - self._slot
            self._slot = behind
            due = self._start + self._slot * self.period
        self._udp_timer = self._loop.call_at(due, self._beat)

    def _announce_stop(self) -> None:
        body = self._encode(Kind.stopping, 0)
        if self._sock is not None:
            try:
                self._sock.sendto(body, self.addr)
            except OSError as exc:
                self.udp_errors.failed(exc)
        if self._bus is not None:
            self._bus.publish(body)

    def _encode(self, kind: Kind, probe: int) -> bytes:
        self.seq = max(self.seq + 1, time.monotonic_ns())
        return encode(
            Heartbeat(
                mac=self.mac,
                seq=self.seq,
                sent_ns=time.time_ns(),
                boot_id=self.boot_id,
                kind=kind,
                probe=probe,
            ),
            self.key,
        )

    # The bus ---------------------------------------------------------------------------------

    async def attach(self, hb_bus: HeartbeatBus) -> None:
        """Subscribe to probes and start the passive bus heartbeat."""
        if self._bus is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = await hb_bus.subscribe(self.mac, self._answer)
        self._bus = hb_bus
        first = self._loop.time() + self.phase * self.bus_period
        self._bus_timer = self._loop.call_at(first, self._bus_beat)

    def _bus_beat(self) -> None:
        assert self._loop is not None and self._bus is not None
        self._bus.publish(self._encode(Kind.periodic, 0))
        # Drift matters little at 1 s; the next beat is one period after this one.
        self._bus_timer = self._loop.call_later(self.bus_period, self._bus_beat)

    def _answer(self, probe: int) -> None:
        """A probe is answered at once: the host service is asking because UDP went quiet."""
        if self._bus is not None:
            self.probes += 1
            self._bus.publish(self._encode(Kind.probe_reply, probe))

    async def detach(self) -> None:
        if self._bus_timer is not None:
            self._bus_timer.cancel()
            self._bus_timer = None
        if self._bus is not None and self._queue is not None:
            await self._bus.unsubscribe(self._queue)
        self._bus = self._queue = None

    async def stop(self, *, announce: bool = False) -> None:
        """Stop both paths. ``announce``: first say "stopping" on both (a clean shutdown or
        reboot), so the host service waits for the node instead of fencing it at once."""
        if announce:
            self._announce_stop()
        if self._udp_timer is not None:
            self._udp_timer.cancel()
            self._udp_timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        await self.detach()


def default_bind_ip(bind_ip: str | None, mgmt_ip: str | None) -> str | None:
    """The source address of the UDP socket: the setting, else the management address when it
    belongs to this machine (simulated hosts' 127.1.x.y do), else the kernel's choice."""
    if bind_ip:
        return bind_ip
    return mgmt_ip if is_local_address(mgmt_ip) else None
