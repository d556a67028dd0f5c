"""Where heartbeats come in and probes go out: the UDP endpoint and the bus link.

Both paths hand every decoded heartbeat to one callback with the path it came by; what the
heartbeats mean is :mod:`roost_host.liveness`' and :mod:`roost_host.monitor`'s business; which
ones to believe (key, source address, replays) is :mod:`roost_host.guard`'s. The datagram path
does as little as possible (batched reads, compare bytes, one dict lookup, one HMAC): at 1,000
hosts at 10 Hz it runs 10,000 times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from roost_host.guard import HeartbeatGuard
from roost_host.liveness import Path
from roost_shared.agentbus import sender_id
from roost_shared.bus import Bus
from roost_shared.heartbeat import (
    HEARTBEAT_EXCHANGE,
    HEARTBEAT_KEY,
    HEARTBEAT_TTL_MS,
    MAC_AT,
    SIGNED_SIZE,
    SIZE,
    probe_body,
    probe_key,
)
from roost_shared.metrics import Metrics

log = logging.getLogger(__name__)

#: How long the UDP socket is left unwatched after a batch of datagrams was read.
BATCH_S = 0.01

#: Called with each heartbeat's raw fields ``(kind, mac, seq, boot)`` (bytes, see
#: :func:`roost_shared.heartbeat.unpack`), its path and the monotonic time it arrived.
OnHeartbeat = Callable[[int, bytes, int, bytes, Path, float], None]


class _Datagrams:
    """The UDP socket, read in batches: when datagrams arrive it reads every one waiting, then
    stops watching the socket for ``batch_s`` (10 ms) so that under load one wake-up reads many
    (1,000 hosts at 10 Hz: ~100 wake-ups a second instead of 10,000), and a lone heartbeat is
    still read at once. The kernel buffer holds what arrives meanwhile (~100 datagrams at
    10,000/s; the buffer is asked for 1 MiB). A heartbeat is seen at most ``batch_s`` late,
    which only makes a host look alive for that much longer."""

    def __init__(self, link: HeartbeatLink, sock: socket.socket, batch_s: float) -> None:
        self.link = link
        self.sock = sock
        self.batch_s = batch_s
        self.loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        now = time.monotonic()
        received = self.link.received
        recv = self.sock.recvfrom
        while True:
            try:
                data, (source, _port) = recv(256)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED echoes; never fatal
                log.debug("heartbeat socket error: %s", exc)
                break
            received(data, Path.udp, now, source)
        self.loop.remove_reader(self.sock.fileno())
        self._resume = self.loop.call_later(self.batch_s, self._watch)

    def _watch(self) -> None:
        self._resume = None
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class HeartbeatLink:
    """The UDP socket and the bus queue heartbeats arrive on, and the probe publisher."""

    def __init__(
        self,
        *,
        bind_host: str,
        port: int,
        guard: HeartbeatGuard,
        bus: Bus,
        metrics: Metrics,
        on_heartbeat: OnHeartbeat,
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.guard = guard
        self.bus = bus
        self.on_heartbeat = on_heartbeat
        self._datagrams: _Datagrams | None = None
        self._exchange: AbstractExchange | None = None
        self._received = metrics.counter(
            "heartbeats_received", "Heartbeats received, by path.", ["path"]
        )
        self._rejected = metrics.counter(
            "heartbeats_rejected",
            "Datagrams or bus messages that were not valid heartbeats (dropped: a late or broken "
            "heartbeat has no value to replay), by path.",
            ["path"],
        )
        self._probes = metrics.counter("heartbeat_probes", "Bus probes sent to silent hosts.")
        self._forged = metrics.counter(
            "heartbeats_forged",
            "Bus heartbeats an agent sent through its own exchange (per-host credentials) for "
            "another host's MAC: dropped, never counted as that host's heartbeat.",
        )
        self._forged_logged_at = -1e9
        # Bound children: the label lookup is not free at 10,000 datagrams a second.
        self._received_by = {p: self._received.labels(p.value) for p in Path}
        self._rejected_by = {p: self._rejected.labels(p.value) for p in Path}
        self._counts: dict[tuple[Path, bool], int] = {
            (p, ok): 0 for p in Path for ok in (True, False)
        }
        self._flusher: asyncio.Task[None] | None = None
        self._channel: AbstractChannel | None = None  # this start's (closed by stop)

    async def start(self) -> None:
        """Bind the UDP port and consume bus heartbeats. Whatever it got before failing or
        being cancelled (a leader term that ends while it starts) is released by :meth:`stop`,
        which the caller must always run after it (``roost_shared.leader.running``): a socket
        left bound would keep this replica from ever binding the port again on its next term."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # the kernel caps it at net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((self.bind_host, self.port))
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._datagrams = _Datagrams(self, sock, BATCH_S)
        self._flusher = asyncio.create_task(self._flush_counts(), name="heartbeat-counts")
        assert self.bus.connection is not None
        # Heartbeats and probes: no confirms, transient, short-lived (see roost_shared.heartbeat).
        # Held before it opens, so that stop() closes it even if this start is cancelled now.
        channel = self._channel = self.bus.connection.channel(publisher_confirms=False)
        await channel
        await channel.set_qos(prefetch_count=0)
        self._exchange = await channel.declare_exchange(
            HEARTBEAT_EXCHANGE, ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(
            "",
            exclusive=True,
            auto_delete=True,
            arguments={
                "x-message-ttl": HEARTBEAT_TTL_MS,
                # A stalled host service must not make the broker hoard heartbeats.
                "x-max-length": 100_000,
                "x-overflow": "drop-head",
            },
        )
        await queue.bind(self._exchange, HEARTBEAT_KEY)
        await queue.consume(self._on_bus, no_ack=True)
        log.info("heartbeats: UDP %s:%d and the bus (%s)", self.bind_host, self.port, queue.name)

    async def stop(self) -> None:
        """Release what :meth:`start` got, however far it went; safe to call again."""
        datagrams, self._datagrams = self._datagrams, None
        if datagrams is not None:
            datagrams.close()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
        self.flush()
        # Stop consuming too: the link stops when this replica's leader term ends and starts
        # again (a new socket and queue) on the next one.
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)

    def received(
        self, data: bytes, path: Path, now: float | None = None, source: str | None = None
    ) -> None:
        """One datagram (``source``: its sender's address) or bus message: believed (see
        :class:`~roost_host.guard.HeartbeatGuard`) or dropped and counted."""
        fields = self.guard.check(data, path is Path.bus, source, time.time_ns())
        if fields is None:
            self._counts[path, False] += 1
            return
        self._counts[path, True] += 1
        kind, mac, seq, boot = fields
        self.on_heartbeat(kind, mac, seq, boot, path, now or time.monotonic())

    async def _flush_counts(self) -> None:
        """Move the plain counts into the Prometheus counters once a second (a labelled
        counter's increment takes a lock: too dear 10,000 times a second)."""
        while True:
            await asyncio.sleep(1.0)
            self.flush()

    def flush(self) -> None:
        self.guard.flush()
        for (path, ok), n in self._counts.items():
            if n:
                (self._received_by if ok else self._rejected_by)[path].inc(n)
                self._counts[path, ok] = 0

    async def _on_bus(self, message: AbstractIncomingMessage) -> None:
        sender = sender_id(message.exchange)
        if sender is not None and not self._sent_by(sender, message.body):
            return
        self.received(message.body, Path.bus)

    def _sent_by(self, sender: str, body: bytes) -> bool:
        """False (counted, logged at most once a minute) when agent ``sender`` published a
        heartbeat through its own exchange ``agent.<sender>`` naming another host's MAC.

        Dropped like any invalid heartbeat rather than parked: it is transient with a 1 s TTL
        and has no value to replay; the counter and the log are what an operator needs."""
        if len(body) not in (SIZE, SIGNED_SIZE):
            return True  # received() counts it as rejected
        mac = body[MAC_AT]
        if mac.hex() == sender:
            return True
        self._forged.inc()
        now = time.monotonic()
        if now - self._forged_logged_at >= 60:
            self._forged_logged_at = now
            log.warning("dropped a forged bus heartbeat: agent %s claimed %s", sender, mac.hex())
        return False

    async def probe(self, mac: str, number: int) -> None:
        """Ask the agent with this MAC to answer on the bus at once."""
        if self._exchange is None:
            return
        self._probes.inc()
        await self._exchange.publish(
            Message(
                probe_body(number),
                delivery_mode=DeliveryMode.NOT_PERSISTENT,
                expiration=HEARTBEAT_TTL_MS / 1000,
            ),
            routing_key=probe_key(mac),
            mandatory=False,  # no queue (the agent is gone) is an answer too: no return
        )
