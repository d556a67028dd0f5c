"""The message bus: RabbitMQ through aio-pika.

Topology (declared by every process that uses it, idempotently):

* ``roost.events``   durable topic exchange; routing key = event type ``<service>.<entity>.<verb>``.
* ``roost.commands`` durable direct exchange for commands to agents (``agent.<mac hex>``).
* ``roost.dead``     durable direct exchange; key = the consumer queue whose message was parked.

Each consumer owns a durable quorum queue ``<service>.<purpose>`` and beside it
``<queue>.retry.<delay>ms`` (classic, TTL = one back-off step, dead-lettering back into the
queue) and ``<queue>.parked`` (quorum, bound to ``roost.dead``). A message is acked only after
its effect committed; a message that cannot be parsed is parked at once; one whose handler
fails is retried through the retry queues and parked when they are used up. The broker parks
it too if consumers keep crashing on it (``x-delivery-limit``). Nothing is dropped:
``deadletters`` stores what is parked, counts it and lets the API replay it.

Every process connects as its own broker user and stamps it on every message (``user_id``,
which the broker refuses unless it is the connection's user); every Consumer parks (reason
``forged``) a message whose sender may not publish its type (:mod:`roost_shared.publishers`).
An agent with per-host credentials (:mod:`roost_shared.agentbus`) publishes through its own
exchange ``agent.<id>`` (``Bus(via=...)``) and consumes a queue the control plane declared
(``Consumer(provisioned=True)``); what it reports must be about its own host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse, urlunparse

import aio_pika
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ValidationError

from roost_shared.agentbus import agent_id
from roost_shared.catalog import host_identity, parse_data
from roost_shared.commands import ISSUERS, CommandSigner, load_signers
from roost_shared.events import Envelope, utcnow
from roost_shared.logging import correlation_id
from roost_shared.publishers import SENDER_HEADER, refusal, sender_user, user_of
from roost_shared.retry import backoff, until_available
from roost_shared.settings import RoostSettings

if TYPE_CHECKING:
    # Agents use the bus without a database and without prometheus_client (they pass a light
    # Metrics look-alike): keep pymongo and prometheus_client out of their memory.
    from pymongo import IndexModel

    from roost_shared.db import Database, Session
    from roost_shared.metrics import Metrics
    from roost_shared.signing import Signer

log = logging.getLogger(__name__)

EVENTS_EXCHANGE = "roost.events"
COMMANDS_EXCHANGE = "roost.commands"
DEAD_EXCHANGE = "roost.dead"

ATTEMPT_HEADER = "x-roost-attempt"
REASON_HEADER = "x-roost-reason"
QUEUE_HEADER = "x-roost-queue"
ROUTING_HEADER = "x-roost-routing-key"

INBOX = "inbox"


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed: it is parked without retries."""


@dataclass(slots=True)
class Delivery:
    """One parsed bus message handed to a handler: the envelope and its typed payload."""

    envelope: Envelope
    payload: BaseModel | None
    message: AbstractIncomingMessage
    #: The broker user who published it (:func:`roost_shared.publishers.sender_user`).
    sender: str | None = None


#: A message and where it goes: (envelope, exchange, routing key or None for its type).
Destined = tuple[Envelope, str, "str | None"]

#: A batch handler: apply every delivery's effect using ``session`` (inside one transaction).
BatchHandler = Callable[["Session | None", list[Delivery]], Awaitable[None]]


def inbox_indexes(ttl_s: int) -> dict[str, list[IndexModel]]:
    """The inbox keeps processed event ids for ``ttl_s`` (de-duplicates redeliveries)."""
    from pymongo import ASCENDING, IndexModel

    return {INBOX: [IndexModel([("at", ASCENDING)], expireAfterSeconds=ttl_s)]}


def broker_url(settings: RoostSettings) -> tuple[str, str]:
    """The URL a process connects with and its broker user: its own user ``roost-<service>``
    when the site's passwords directory holds its password, else ``amqp_url``'s user."""
    url = settings.amqp_url
    parsed = urlparse(url)
    directory = settings.broker_passwords_dir
    user = user_of(settings.service, settings.broker_site)
    password_file = directory / user if directory is not None else None
    if password_file is None or not password_file.is_file():
        if password_file is not None:
            log.warning(
                "no broker password for %s in %s: connecting as %s, whose events no consumer "
                "believes",
                user,
                directory,
                parsed.username,
            )
        return url, parsed.username or "guest"
    password = password_file.read_text().strip()
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parsed.hostname or '127.0.0.1'}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc)), user


def to_message(
    envelope: Envelope, headers: dict[str, Any] | None = None, *, user_id: str | None = None
) -> Message:
    """A persistent AMQP message carrying the envelope as JSON, stamped with the publisher's
    broker user (which the broker checks)."""
    return Message(
        envelope.model_dump_json(exclude_none=True).encode(),
        content_type="application/cloudevents+json",
        message_id=envelope.id,
        type=envelope.type,
        correlation_id=envelope.correlationid,
        timestamp=envelope.time,
        delivery_mode=DeliveryMode.PERSISTENT,
        headers=headers or {},
        user_id=user_id,
    )


class JitteredRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection with a reconnect interval drawn afresh from
    :func:`~roost_shared.retry.backoff` (0.5 s to 3 s) each time aio-pika reads it (before each
    attempt, and in its log lines), starting again from the shortest once connected. With a
    fixed interval every process retried in lock-step: after a broker restart a whole fleet
    reconnected in the same instant, again and again."""

    RECONNECT_INITIAL_S = 0.5
    RECONNECT_CAP_S = 3.0
    _delays: Iterator[float]

    @property  # type: ignore[override]
    def reconnect_interval(self) -> float:
        return next(self._delays)

    @reconnect_interval.setter
    def reconnect_interval(self, _value: float) -> None:
        self._restart_delays()

    def _restart_delays(self) -> None:
        self._delays = backoff(initial=self.RECONNECT_INITIAL_S, cap=self.RECONNECT_CAP_S)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._restart_delays()


class Bus:
    """A robust connection, a confirming publish channel and the shared exchanges.

    Created and closed by the app's lifespan. aio-pika's robust connection reconnects after a
    broker restart and re-declares the exchanges, queues, bindings and consumers it made.
    """

    def __init__(
        self,
        settings: RoostSettings,
        metrics: Metrics,
        *,
        via: str | None = None,
        signers: dict[str, Signer] | None = None,
    ) -> None:
        """``via``: publish everything (events and parked messages) through this exchange,
        declared by someone else (an agent with per-host credentials may declare nothing).
        ``signers``: the command signing keys by issuer (default: the service's own, from
        ``command_key_file`` or ``command_keys_dir``); a command is signed by its type's issuer
        (:data:`roost_shared.commands.ISSUERS`) when it is published."""
        self.settings = settings
        self.metrics = metrics
        self.via = via
        # Per-host agents (via) connect with the credentials they were provisioned with.
        if via is None:
            self.url, self.user = broker_url(settings)
        else:
            self.url, self.user = settings.amqp_url, urlparse(settings.amqp_url).username or ""
        if signers is None:
            key = settings.command_key
            signers = load_signers(
                key.get_secret_value() if key is not None else None,
                settings.command_key_file,
                settings.command_keys_dir,
                settings.service,
            )
        self.signers = {name: CommandSigner(name, key) for name, key in signers.items()}
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchanges: dict[str, AbstractExchange] = {}
        self._published = metrics.counter(
            "bus_published", "Events published with a broker confirm.", ["type"]
        )

    async def connect(self, deadline_s: float = 60.0) -> None:
        """Connect (waiting for the broker up to ``deadline_s``) and declare the exchanges."""
        async for attempt in until_available("broker", deadline_s=deadline_s):
            with attempt:
                self.connection = await aio_pika.connect_robust(
                    self.url,
                    client_properties={"connection_name": f"roost-{self.settings.service}"},
                    connection_class=JitteredRobustConnection,
                )
        assert self.connection is not None
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self.channel = await self.connection.channel(publisher_confirms=True)
        if self.via is not None:
            # Passive: needs no permission, and fails at once if provisioning was not done.
            try:
                own = await self.channel.get_exchange(self.via, ensure=True)
            except Exception:
                # Not provisioned (yet): leave no connection behind for the caller's retry.
                await self.connection.close()
                self.connection = self.channel = None
                raise
            self.exchanges = {EVENTS_EXCHANGE: own, DEAD_EXCHANGE: own}
            return
        for name, kind in (
            (EVENTS_EXCHANGE, ExchangeType.TOPIC),
            (COMMANDS_EXCHANGE, ExchangeType.DIRECT),
            (DEAD_EXCHANGE, ExchangeType.DIRECT),
        ):
            self.exchanges[name] = await self.channel.declare_exchange(name, kind, durable=True)
        self.exchanges[""] = self.channel.default_exchange

    def _on_reconnect(self, *_: object) -> None:
        log.warning("reconnected to the broker; topology and consumers restored")

    @property
    def connected(self) -> bool:
        """True while the connection is open (readiness)."""
        return (
            self.connection is not None
            and not self.connection.is_closed
            and bool(self.connection.connected.is_set())
        )

    async def publish(
        self,
        envelopes: Sequence[Envelope],
        *,
        exchange: str = EVENTS_EXCHANGE,
        routing_key: str | None = None,
        retry_for_s: float = 0.0,
    ) -> None:
        """Publish and wait for every broker confirm (all at once, so a batch costs one round).

        With ``retry_for_s`` the whole batch is retried until confirmed or the time is up (used
        by scripts without an outbox); a retried message may arrive twice, which consumers'
        inboxes absorb.
        """
        await self.publish_to(
            [(e, exchange, routing_key) for e in envelopes], retry_for_s=retry_for_s
        )

    async def publish_to(self, items: Sequence[Destined], *, retry_for_s: float = 0.0) -> None:
        """Publish messages each to its own exchange and routing key (None: the event type), in
        one confirm round: the outbox relay sends events and commands together this way."""
        deadline = time.monotonic() + retry_for_s
        delays = backoff(initial=0.1, cap=2.0)
        while True:
            try:
                await self._publish_once(items)
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise
                delay = next(delays)
                log.warning("publish failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _signed(self, envelope: Envelope, routing_key: str | None) -> Envelope:
        """A command signed by its issuer for the agent it goes to (commands are signed here,
        as they are published, so that their sequence numbers follow the publishing order)."""
        issuer = ISSUERS.get(envelope.type)
        signer = self.signers.get(issuer) if issuer is not None else None
        if signer is None or routing_key is None:
            raise ValueError(
                f"cannot send command {envelope.type}: this process has no signing key of its "
                f"issuer ({issuer or 'none: not a command agents run'})"
            )
        return signer.sign(envelope, routing_key)

    async def _publish_once(self, items: Sequence[Destined]) -> None:
        if not self.exchanges:
            raise ConnectionError("bus is not connected")
        messages = [
            (
                self._signed(e, routing_key) if exchange == COMMANDS_EXCHANGE else e,
                exchange,
                routing_key,
            )
            for e, exchange, routing_key in items
        ]
        # Publishes are written to the channel in this order; the confirms come back together.
        await asyncio.gather(
            *(
                self.exchanges[exchange].publish(
                    to_message(e, user_id=self.user),
                    routing_key=routing_key or e.type,
                    mandatory=False,
                )
                for e, exchange, routing_key in messages
            )
        )
        for e, _, _ in items:
            self._published.labels(e.type).inc()

    async def publish_raw(self, message: Message, *, exchange: str, routing_key: str) -> None:
        """Publish a prepared message (used to move messages to retry and parking queues), as
        this process's broker user."""
        message.user_id = self.user
        await self.exchanges[exchange].publish(message, routing_key=routing_key, mandatory=False)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


class Consumer:
    """A batched, idempotent, transactional consumer of one durable quorum queue.

    Messages that arrive while a batch is being committed form the next batch (no lingering, so
    a lone message is handled at once and a burst is handled in large transactions). Each batch
    runs in one database transaction together with the inbox insert of its event ids, and is
    acked after commit. If a batch fails, its messages are retried one by one so that a single
    poison message cannot hold the others back.
    """

    def __init__(
        self,
        *,
        bus: Bus,
        db: Database | None,
        queue: str,
        bindings: Sequence[str],
        handler: BatchHandler,
        after_commit: Callable[[], None] | None = None,
        batch_max: int | None = None,
        exchange: str = EVENTS_EXCHANGE,
        queue_type: str = "quorum",
        provisioned: bool = False,
    ) -> None:
        """``exchange``/``bindings`` say what the queue receives; ``queue_type="classic"`` suits
        the many small per-agent command queues (a quorum queue is a Raft group each).
        ``provisioned``: the queue, its bindings and parked queue were declared by the control
        plane (an agent with per-host credentials); only a passive declare, then consume."""
        self.provisioned = provisioned
        settings = bus.settings
        self.exchange = exchange
        self.queue_type = queue_type
        self.bus = bus
        self.db = db
        self.queue_name = queue
        self.bindings = list(bindings)
        self.handler = handler
        self.after_commit = after_commit
        self.batch_max = batch_max or settings.prefetch
        # A provisioned queue has no retry queues (nor may its user publish to the default
        # exchange they are fed through): a failing message is parked at once.
        self.retry_delays_ms = [] if provisioned else list(settings.retry_delays_ms)
        self._pending: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        m = bus.metrics
        self._outcomes = m.counter(
            "bus_consumed", "Messages consumed, by queue and outcome.", ["queue", "outcome"]
        )
        self._batch_seconds = m.histogram(
            "bus_batch_seconds", "Time to process and commit one batch.", ["queue"]
        )
        self._parked = m.counter(
            "bus_dead_lettered", "Messages parked in a dead-letter queue.", ["queue", "reason"]
        )

    def retry_queue(self, delay_ms: int) -> str:
        """The holding queue for one back-off step, named by its delay: changing the delays
        declares new queues instead of clashing with the old ones' TTL."""
        return f"{self.queue_name}.retry.{delay_ms}ms"

    @property
    def parked_queue(self) -> str:
        return f"{self.queue_name}.parked"

    async def start(self) -> None:
        """Declare the queue family, bind it and start consuming."""
        assert self.bus.connection is not None
        channel = await self.bus.connection.channel()
        await channel.set_qos(prefetch_count=self.bus.settings.prefetch)
        self._channel = channel
        if self.provisioned:
            self.queue = await channel.declare_queue(self.queue_name, passive=True)
            self._task = asyncio.create_task(self._run(), name=f"consumer:{self.queue_name}")
            await self.queue.consume(self._pending.put, no_ack=False)
            return
        queue = await channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments={
                "x-queue-type": self.queue_type,
                "x-dead-letter-exchange": DEAD_EXCHANGE,
                "x-dead-letter-routing-key": self.queue_name,
                # Only quorum queues count redeliveries.
                **(
                    {"x-delivery-limit": self.bus.settings.delivery_limit}
                    if self.queue_type == "quorum"
                    else {}
                ),
            },
        )
        for key in self.bindings:
            await queue.bind(self.exchange, routing_key=key)
        for delay in self.retry_delays_ms:
            await channel.declare_queue(
                self.retry_queue(delay),
                durable=True,
                arguments={
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue_name,
                },
            )
        parked = await channel.declare_queue(
            self.parked_queue, durable=True, arguments={"x-queue-type": self.queue_type}
        )
        await parked.bind(DEAD_EXCHANGE, routing_key=self.queue_name)
        self.queue = queue
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.queue_name}")
        await queue.consume(self._pending.put, no_ack=False)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self.batch_max and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Only broker trouble gets here (ack/park failed); unacked messages come back.
                log.exception("consumer %s: batch left unacknowledged", self.queue_name)

    def _sender(self, message: AbstractIncomingMessage) -> str | None:
        return sender_user(message.user_id, message.headers, self.bus.user)

    def _parse(self, message: AbstractIncomingMessage) -> Delivery:
        envelope = Envelope.model_validate_json(message.body)
        payload = parse_data(envelope.type, envelope.data)
        return Delivery(envelope, payload, message, self._sender(message))

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        deliveries: list[Delivery] = []
        for message in batch:
            try:
                delivery = self._parse(message)
            except (ValidationError, LookupError, ValueError) as exc:
                await self._park(message, "malformed", _short(exc))
                continue
            forged = forgery(delivery)
            if forged is not None:
                await self._park(message, "forged", forged, sender=delivery.sender)
            else:
                deliveries.append(delivery)
        if not deliveries:
            return
        try:
            duplicates = await self._commit(deliveries)
        except Exception as exc:
            if len(deliveries) > 1:
                log.warning(
                    "consumer %s: batch of %d failed (%s); isolating",
                    self.queue_name,
                    len(deliveries),
                    _short(exc),
                )
                for delivery in deliveries:
                    await self._process_single(delivery)
                return
            await self._retry_or_park(deliveries[0], exc)
            return
        await deliveries[-1].message.ack(multiple=True)
        self._outcomes.labels(self.queue_name, "processed").inc(len(deliveries) - duplicates)
        if duplicates:
            self._outcomes.labels(self.queue_name, "duplicate").inc(duplicates)
        self._batch_seconds.labels(self.queue_name).observe(time.perf_counter() - started)

    async def _process_single(self, delivery: Delivery) -> None:
        try:
            duplicates = await self._commit([delivery])
        except Exception as exc:
            await self._retry_or_park(delivery, exc)
            return
        await delivery.message.ack()
        self._outcomes.labels(self.queue_name, "duplicate" if duplicates else "processed").inc()

    async def _commit(self, deliveries: list[Delivery]) -> int:
        """Apply the batch; returns how many were duplicates already processed."""
        if self.db is None:
            await self.handler(None, deliveries)
            return 0
        token = correlation_id.set(
            deliveries[0].envelope.correlationid or deliveries[0].envelope.id
        )
        try:
            fresh_count = await self.db.in_transaction(
                lambda session: self._claim_and_handle(session, deliveries)
            )
        finally:
            correlation_id.reset(token)
        if self.after_commit is not None and fresh_count:
            self.after_commit()
        return len(deliveries) - fresh_count

    async def _claim_and_handle(self, session: Session, deliveries: list[Delivery]) -> int:
        assert self.db is not None
        inbox = self.db[INBOX]
        ids = [d.envelope.id for d in deliveries]
        seen = {
            doc["_id"]
            async for doc in inbox.find({"_id": {"$in": ids}}, {"_id": 1}, session=session)
        }
        fresh: list[Delivery] = []
        fresh_ids: set[str] = set()
        for d in deliveries:
            # The same event twice within one batch counts once, too.
            if d.envelope.id not in seen and d.envelope.id not in fresh_ids:
                fresh.append(d)
                fresh_ids.add(d.envelope.id)
        if not fresh:
            return 0
        now = utcnow()
        await inbox.insert_many(
            [{"_id": d.envelope.id, "type": d.envelope.type, "at": now} for d in fresh],
            session=session,
        )
        await self.handler(session, fresh)
        return len(fresh)

    async def _retry_or_park(self, delivery: Delivery, exc: BaseException) -> None:
        message = delivery.message
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 0) or 0)
        if isinstance(exc, PermanentError) or attempt >= len(self.retry_delays_ms):
            await self._park(
                message, "failed", _short(exc), attempt=attempt, sender=delivery.sender
            )
            return
        log.warning(
            "consumer %s: event %s failed (attempt %d): %s; retrying in %d ms",
            self.queue_name,
            delivery.envelope.id,
            attempt + 1,
            _short(exc),
            self.retry_delays_ms[attempt],
        )
        await self.bus.publish_raw(
            _copy(message, {ATTEMPT_HEADER: attempt + 1, SENDER_HEADER: _named(delivery.sender)}),
            exchange="",
            routing_key=self.retry_queue(self.retry_delays_ms[attempt]),
        )
        await message.ack()
        self._outcomes.labels(self.queue_name, "retried").inc()

    async def _park(
        self,
        message: AbstractIncomingMessage,
        kind: str,
        reason: str,
        *,
        attempt: int = 0,
        sender: str | None = None,
    ) -> None:
        log.error(
            "consumer %s: parking message %s (%s): %s",
            self.queue_name,
            message.message_id,
            kind,
            reason,
        )
        headers = {
            REASON_HEADER: f"{kind}: {reason}"[:1000],
            QUEUE_HEADER: self.queue_name,
            ROUTING_HEADER: message.routing_key or "",
            ATTEMPT_HEADER: attempt,
            # Parked and replayed, it is still believed only as much as its first sender.
            SENDER_HEADER: _named(sender or self._sender(message)),
        }
        await self.bus.publish_raw(
            _copy(message, headers), exchange=DEAD_EXCHANGE, routing_key=self.queue_name
        )
        await message.ack()
        self._parked.labels(self.queue_name, kind).inc()
        self._outcomes.labels(self.queue_name, "parked").inc()


def forgery(delivery: Delivery) -> str | None:
    """Why a delivery must not be believed, or None: its broker-validated sender may not
    publish its type, or an agent's report is about another host
    (:func:`roost_shared.publishers.refusal`)."""
    if delivery.envelope.type in ISSUERS:
        # A command is believed for its issuer's signature, which the agent checks, counts and
        # reports (250.011 on repeated forgeries): whoever published it.
        return None
    claimed = host_identity(delivery.payload)
    return refusal(delivery.envelope.type, delivery.sender, agent_id(claimed) if claimed else None)


def _named(sender: str | None) -> str:
    """The sender header's value; ``unknown`` (never believed) when there was none, so that a
    re-published message is never taken for the re-publisher's own."""
    return sender or "unknown"


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> Message:
    merged = dict(message.headers or {})
    merged.pop("x-death", None)
    merged.update(headers)
    return Message(
        message.body,
        content_type=message.content_type,
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        delivery_mode=DeliveryMode.PERSISTENT,
        headers=merged,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"[:500]
