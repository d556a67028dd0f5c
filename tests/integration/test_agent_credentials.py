"""Per-host bus credentials (issue 9, item 4): the broker, not the agents' good manners, keeps an
agent to its own heartbeats, reports and commands; consumers refuse a payload that claims
another host. Real RabbitMQ (a vhost of the test's own, users ``agent-<mac hex>`` removed
afterwards), real config and host service processes, a real agent process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika import Message
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

from roost_agent.credentials import add, declare_topology, rabbitmqctl, remove, site
from roost_shared.agentbus import AgentBusNames
from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Bus
from roost_shared.catalog import HostAnnounced
from roost_shared.events import Envelope
from roost_shared.heartbeat import (
    HEARTBEAT_EXCHANGE,
    HEARTBEAT_KEY,
    Heartbeat,
    Kind,
    decode,
    encode,
    probe_body,
    probe_key,
)
from roost_shared.hostkeys import link_key
from roost_shared.metrics import Metrics
from roost_shared.settings import RoostSettings
from roost_shared.smlink import HELLO_KEY, Hello, agent_link_key, decode_grant
from roost_shared.smlink import encode as encode_hello
from tests.config.helpers import new_mac
from tests.support.agents import AgentUnderTest, apply
from tests.support.fault import metric
from tests.support.stack import ServiceUnderTest, key_of
from tests.support.waiting import eventually


@dataclass
class Provisioned:
    mac: str
    url: str

    @property
    def names(self) -> AgentBusNames:
        return AgentBusNames.of(self.mac, site())


@pytest.fixture
async def provision(stack) -> AsyncIterator[Callable[[str | None], Awaitable[Provisioned]]]:
    """Provision agents in the test's vhost; their users (broker-wide) are removed after."""
    made: list[str] = []

    async def make(mac: str | None = None) -> Provisioned:
        mac = mac or new_mac()
        url = await add(mac, stack.amqp_url)
        made.append(mac)
        return Provisioned(mac, url)

    yield make
    for mac in made:
        await remove(mac, stack.amqp_url)


@dataclass
class Seen:
    """Messages that reached a queue of the test's own: (exchange the publisher used, body)."""

    got: list[tuple[str, bytes]] = field(default_factory=list)

    async def wait(self, check: Callable[[str, bytes], bool], what: str) -> tuple[str, bytes]:
        async def probe() -> tuple[str, bytes] | None:
            return next(((x, b) for x, b in self.got if check(x, b)), None)

        return await eventually(probe, timeout=15, what=what)


async def watch(bus: Bus, exchange: str, key: str) -> Seen:
    assert bus.connection is not None
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=key)
    seen = Seen()

    async def on_message(message: AbstractIncomingMessage) -> None:
        seen.got.append((message.exchange or "", message.body))
        await message.ack()

    await queue.consume(on_message)
    return seen


async def refused(connection: AbstractConnection, act: Callable[[AbstractChannel], Any]):
    """Run ``act`` on a fresh confirming channel; the broker must close it with 403."""
    channel = await connection.channel(publisher_confirms=True)
    with pytest.raises(ChannelAccessRefused) as info:
        await act(channel)
    assert "ACCESS_REFUSED" in str(info.value)
    return str(info.value)


def announce(mac: str) -> Message:
    envelope = Envelope.of(
        HostAnnounced(mgmt_mac=mac, hostname="worker-7", boot_id=uuid.uuid4().hex),
        source="agent/test",
        subject=mac,
    )
    return Message(envelope.model_dump_json().encode(), message_id=envelope.id)


def heartbeat(mac: str, kind: Kind = Kind.periodic, probe: int = 0) -> bytes:
    """A heartbeat of a new boot, signed with the host's own key."""
    hb = Heartbeat(
        mac=mac,
        seq=time.monotonic_ns(),
        sent_ns=time.time_ns(),
        boot_id=uuid.uuid4().hex,
        kind=kind,
        probe=probe,
    )
    return encode(hb, key_of(mac))


async def test_the_broker_keeps_an_agent_to_its_own_exchange_and_queues(stack, provision):
    a, b = await provision(None), await provision(None)
    admin = await stack.bus()
    events = await watch(admin, EVENTS_EXCHANGE, "agent.#")
    # Not a robust connection: a channel the broker closed must stay closed.
    connection = await aio_pika.connect(a.url)
    try:
        # Its own exchange: accepted (confirmed), and it reaches roost.events' consumers with its
        # routing key, the broker naming the exchange the publisher used.
        own = await connection.channel(publisher_confirms=True)
        exchange = await own.get_exchange(a.names.exchange, ensure=True)
        await exchange.publish(announce(a.mac), routing_key="agent.host.announced")
        source, _ = await events.wait(lambda x, b: True, "A's announce on roost.events")
        assert source == a.names.exchange

        async def publish_to(name: str, key: str) -> Callable[[AbstractChannel], Any]:
            async def act(channel: AbstractChannel) -> None:
                target = await channel.get_exchange(name, ensure=False)
                await target.publish(announce(a.mac), routing_key=key)

            return act

        # Another host's exchange, and the shared ones directly: refused by the broker.
        why = await refused(connection, await publish_to(b.names.exchange, "agent.host.announced"))
        assert b.names.exchange in why and a.names.user in why
        why = await refused(connection, await publish_to(EVENTS_EXCHANGE, "agent.host.announced"))
        assert EVENTS_EXCHANGE in why
        why = await refused(connection, await publish_to(HEARTBEAT_EXCHANGE, HEARTBEAT_KEY))
        assert HEARTBEAT_EXCHANGE in why

        # A queue of its own bound to another host's commands: refused (no read on
        # roost.commands), as is B's inbound exchange (B's probes) and B's command queue.
        async def bind_to(source: str, key: str) -> Callable[[AbstractChannel], Any]:
            async def act(channel: AbstractChannel) -> None:
                name = a.names.private_queue("probe", uuid.uuid4().hex[:12])
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
                await queue.bind(source, routing_key=key)

            return act

        why = await refused(connection, await bind_to(COMMANDS_EXCHANGE, b.names.queue))
        assert COMMANDS_EXCHANGE in why
        why = await refused(connection, await bind_to(b.names.inbound, probe_key(b.mac)))
        assert b.names.inbound in why

        async def consume_b(channel: AbstractChannel) -> None:
            queue = await channel.declare_queue(b.names.queue, passive=True)
            await queue.consume(_ignore)

        why = await refused(connection, consume_b)
        assert f"queue '{b.names.queue}'" in why

        # Nor may it (re)declare the shared exchanges.
        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)

        await refused(connection, declare)

        # A command for A reaches A's queue, which A may consume; B's queue stays empty.
        commands = await connection.channel()
        queue = await commands.declare_queue(a.names.queue, passive=True)
        got: list[str] = []

        async def on_command(message: AbstractIncomingMessage) -> None:
            got.append(json.loads(message.body)["data"]["version"])
            await message.ack()

        await queue.consume(on_command)
        await apply(admin, a.mac, 3)
        await eventually(lambda: got == [3], timeout=10, what="A's command delivered to A")
        assert admin.channel is not None
        b_queue = await admin.channel.declare_queue(b.names.queue, passive=True)
        assert b_queue.declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_reports_and_heartbeats_reach_consumers_and_forgeries_are_refused(stack, provision):
    a, b = await provision(None), await provision(None)
    config = stack.start("config")
    host = stack.start("host")
    bus = Bus(
        RoostSettings(service="agent", amqp_url=a.url), Metrics("agent"), via=a.names.exchange
    )
    await bus.connect(deadline_s=10)
    try:
        await _reports_and_heartbeats(stack, a, b, bus, config, host)
    finally:
        await bus.close()  # before its user is removed: no reconnect attempts


async def _reports_and_heartbeats(
    stack: Any,
    a: Provisioned,
    b: Provisioned,
    bus: Bus,
    config: ServiceUnderTest,
    host: ServiceUnderTest,
) -> None:
    async with config.client(stack.tokens.admin) as http, host.client(stack.tokens.admin) as hhttp:
        # A's own report is applied: the config service learns the host.
        await bus.publish([Envelope.model_validate_json(announce(a.mac).body)])

        async def hosts() -> list[dict[str, Any]]:
            return (await http.get("/v1/hosts")).json()["hosts"]

        await eventually(
            lambda: _has(hosts, a.mac), timeout=15, what="config learns A from A's own announce"
        )

        # A claiming B through its own exchange: parked as forged, B never appears.
        await bus.publish([Envelope.model_validate_json(announce(b.mac).body)])

        async def forged() -> list[dict[str, Any]]:
            letters = (await http.get("/v1/dead-letters")).json()["dead_letters"]
            return [d for d in letters if d["reason"].startswith("forged")]

        letter = (await eventually(forged, timeout=15, what="the forged announce parked"))[0]
        assert a.names.id in letter["reason"] and b.names.id in letter["reason"]
        assert b.mac in letter["body"]
        assert not await _has(hosts, b.mac)
        assert await metric(http, "roost_bus_dead_lettered_total", reason="forged") == 1

        # Heartbeats through A's exchange: A's own is received on the bus path, one naming B
        # is counted as forged and not received.
        assert bus.connection is not None
        channel = await bus.connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(a.names.exchange, ensure=True)
        await exchange.publish(Message(heartbeat(a.mac)), routing_key=HEARTBEAT_KEY)

        async def bus_beats() -> float | None:
            n = await metric(hhttp, "roost_heartbeats_received_total", path="bus")
            return n or None

        assert await eventually(bus_beats, timeout=15, what="A's heartbeat received") == 1
        await exchange.publish(Message(heartbeat(b.mac)), routing_key=HEARTBEAT_KEY)

        async def forged_beats() -> float | None:
            return await metric(hhttp, "roost_heartbeats_forged_total") or None

        assert await eventually(forged_beats, timeout=15, what="B's forged heartbeat") == 1
        assert await metric(hhttp, "roost_heartbeats_received_total", path="bus") == 1


async def _ignore(_message: AbstractIncomingMessage) -> None:
    return None


async def _has(hosts: Callable[[], Awaitable[list[dict[str, Any]]]], mac: str) -> bool:
    return any(h["mgmt_mac"] == mac for h in await hosts())


async def test_an_agent_in_secured_mode_announces_heartbeats_and_takes_commands(
    stack, provision, tmp_path: Path
):
    agent = AgentUnderTest(
        stack.amqp_url,
        tmp_path,
        ROOST_BUS_HEARTBEAT_PERIOD_MS="200",
        ROOST_BUS_SECURED="true",
    )
    mine = await provision(agent.mac)
    agent.proc = agent.fleet.process(agent.host, mine.url, tmp_path / "logs", extra_env=agent.env)
    admin = await stack.bus()
    events = await watch(admin, EVENTS_EXCHANGE, "agent.#")
    beats = await watch(admin, HEARTBEAT_EXCHANGE, HEARTBEAT_KEY)
    # Started before its exchange exists (provisioning not finished): it is refused, says so
    # and keeps trying; once the topology is there it comes up by itself.
    assert admin.channel is not None
    await admin.channel.exchange_delete(mine.names.exchange)
    agent.start()
    log_file = tmp_path / "logs" / "agent-worker-0.log"
    await eventually(
        lambda: log_file.exists() and "NOT_FOUND" in log_file.read_text(),
        timeout=30,
        what="the agent refused for want of its exchange",
    )
    await declare_topology(stack.amqp_url, mine.names)
    try:

        def about(type_: str) -> Callable[[str, bytes], bool]:
            def check(_x: str, body: bytes) -> bool:
                e = json.loads(body)
                return e["type"] == type_ and e["data"].get("mgmt_mac") == agent.mac

            return check

        source, _ = await events.wait(about("agent.host.announced"), "the agent's announce")
        assert source == mine.names.exchange
        source, _ = await beats.wait(
            lambda x, b: decode(b).mac == agent.mac, "a bus heartbeat from the agent"
        )
        assert source == mine.names.exchange

        # A probe reaches it through its inbound exchange and is answered at once.
        assert admin.channel is not None
        hb = await admin.channel.get_exchange(HEARTBEAT_EXCHANGE, ensure=True)
        await hb.publish(Message(probe_body(41)), routing_key=probe_key(agent.mac))
        await beats.wait(
            lambda x, b: decode(b).kind == Kind.probe_reply and decode(b).probe == 41,
            "the probe answered",
        )

        # A command reaches it; its answer comes back through its own exchange.
        await apply(admin, agent.mac, 1)
        source, _ = await events.wait(about("agent.config.applied"), "config 1 applied")
        assert source == mine.names.exchange

        # A command it cannot parse is parked in its own parked queue, through its exchange.
        commands = await admin.channel.get_exchange(COMMANDS_EXCHANGE, ensure=True)
        await commands.publish(Message(b"not json"), routing_key=mine.names.queue)

        async def parked() -> int | None:
            # A channel per look: a robust channel answers a repeated declare from its cache.
            assert admin.connection is not None
            async with admin.connection.channel() as channel:
                q = await channel.declare_queue(mine.names.parked, passive=True)
                return q.declaration_result.message_count or None

        assert await eventually(parked, timeout=15, what="the bad command parked") == 1

        # Its connection cut by the broker: it reconnects with its own topology (passive
        # declares, its named probe and grant queues), announces again and takes commands.
        before = len([1 for x, b in events.got if about("agent.host.announced")(x, b)])
        await asyncio.to_thread(rabbitmqctl, "close_all_user_connections", mine.names.user, "test")
        await eventually(
            lambda: len([1 for x, b in events.got if about("agent.host.announced")(x, b)]) > before,
            timeout=30,
            what="announced again after the reconnect",
        )
        await apply(admin, agent.mac, 2)
        await events.wait(
            lambda x, b: (
                about("agent.config.applied")(x, b) and json.loads(b)["data"]["version"] == 2
            ),
            "config 2 applied after the reconnect",
        )
        assert agent.proc.running
        log = (tmp_path / "logs").glob("*.log")
        assert not any("ACCESS_REFUSED" in p.read_text() for p in log)
    finally:
        agent.stop()


async def test_the_script_provisions_and_removing_closes_the_connection_and_revokes(stack):
    mac = new_mac()
    script = Path(__file__).parents[2] / "deploy" / "scripts" / "agent-credentials.sh"

    def run(*args: str) -> str:
        env = {**os.environ, "ROOST_AMQP_URL": stack.amqp_url}
        done = subprocess.run(
            [str(script), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        lines = dict(line.split("=", 1) for line in run("add", mac).splitlines())
        assert lines["ROOST_BUS_SECURED"] == "true" and lines["ROOST_MGMT_MAC"] == mac
        url = lines["ROOST_AMQP_URL"]
        assert url.startswith(f"amqp://{AgentBusNames.of(mac, site()).user}:")
        limits = await asyncio.to_thread(
            subprocess.check_output,
            ["rabbitmqctl", "-q", "list_user_limits", "--user", AgentBusNames.of(mac, site()).user],
            text=True,
            timeout=60,
        )
        assert json.loads(limits) == {"max-connections": 3, "max-channels": 64}
        connection = await aio_pika.connect(url)
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        run("remove", mac)
        await asyncio.wait_for(closed.wait(), 15)
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(url)
    finally:
        await remove(mac, stack.amqp_url)  # idempotent: a user already gone is fine


async def test_the_service_link_answers_only_hellos_an_agent_sends_for_itself(stack, provision):
    a, b = await provision(None), await provision(None)
    stack.start("service")
    ca, cb = await aio_pika.connect(a.url), await aio_pika.connect(b.url)
    try:
        grants: dict[str, list[bytes]] = {a.mac: [], b.mac: []}
        for agent, connection in ((a, ca), (b, cb)):
            channel = await connection.channel()
            name = agent.names.private_queue("link", uuid.uuid4().hex[:12])
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(agent.names.inbound, routing_key=agent_link_key(agent.mac))
            await queue.consume(_collect(grants[agent.mac]), no_ack=True)
        channel = await ca.channel(publisher_confirms=True)
        own = await channel.get_exchange(a.names.exchange, ensure=True)

        boot = uuid.uuid4().hex
        sent: list[int] = []

        def hello(mac: str) -> Message:
            # Signed with A's key whoever it names: A holds no other.
            seq = time.monotonic_ns()
            sent.append(seq)
            message = Hello(
                mac=mac, host="worker-7", seq=seq, path="bus", boot=boot, ts=time.time_ns()
            )
            return Message(encode_hello(message, link_key(key_of(a.mac))))

        # A speaks for B, then for itself, until the service (starting) answers A: B gets
        # nothing, ever, though its grants queue is bound and A's forgeries came first.
        async def answered() -> bool:
            await own.publish(hello(b.mac), routing_key=HELLO_KEY)
            await own.publish(hello(a.mac), routing_key=HELLO_KEY)
            return bool(grants[a.mac])

        await eventually(answered, timeout=30, interval=0.5, what="a grant for A's own hello")
        key = link_key(key_of(a.mac))
        assert decode_grant(grants[a.mac][0], key).seq in sent
        assert grants[b.mac] == []
    finally:
        await ca.close()
        await cb.close()


def _collect(into: list[bytes]) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def on_message(message: AbstractIncomingMessage) -> None:
        into.append(message.body)

    return on_message
