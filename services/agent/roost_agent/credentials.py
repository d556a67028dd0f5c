"""Provision (and remove) one agent's per-host bus credentials: user, permissions, topology.

Run by the control plane's operator, not by the agent (the agent needs none of it)::

    python -m roost_agent.credentials add 02:00:00:00:00:01 --admin-url amqp://admin:…@broker/
    python -m roost_agent.credentials remove 02:00:00:00:00:01 --admin-url …

``add`` creates the RabbitMQ user ``agent-<mac hex>`` with a new random password, the
permissions of :meth:`AgentBusNames.permissions` and its connection limits, declares the agent's
exchanges and queues and binds them into the shared topology (names:
:mod:`roost_shared.agentbus`), and prints the agent's environment (``ROOST_AMQP_URL`` with its
credentials, ``ROOST_BUS_SECURED=true``). Idempotent: running it again rotates the password.
``remove`` deletes the user (closing its connections) and its exchanges and queues. Users and
permissions go through ``rabbitmqctl`` (one ``import_definitions`` for any number of hosts;
``ROOST_RABBITMQCTL`` overrides the command, e.g. ``kubectl exec -n roost rabbitmq-0 --
rabbitmqctl``), the topology through AMQP with the admin URL (rabbitmqctl cannot declare
exchanges).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import subprocess
import sys
from urllib.parse import quote, unquote, urlparse, urlunparse

import aio_pika
from aio_pika import ExchangeType

from roost_shared import brokerusers
from roost_shared.agentbus import AgentBusNames
from roost_shared.bus import COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE
from roost_shared.heartbeat import HEARTBEAT_EXCHANGE, HEARTBEAT_KEY, probe_key
from roost_shared.smlink import HELLO_KEY, SM_EXCHANGE, agent_link_key

#: Every agent event type is ``agent.<entity>.<verb>``: three words. The agent's own command
#: queue name ``agent.<id>`` (its parking key) has two, so it cannot leak into roost.events.
AGENT_EVENTS = "agent.*.*"


#: The limits of every agent user: an agent needs one connection (another for a moment while
#: reconnecting) and ~5 channels; the limits stop a compromised node from exhausting the broker.
USER_LIMITS = {"max-connections": 3, "max-channels": 64}


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    """Run rabbitmqctl (or ``ROOST_RABBITMQCTL``); raises CalledProcessError with its stderr."""
    command = shlex.split(os.environ.get("ROOST_RABBITMQCTL", "rabbitmqctl"))
    subprocess.run(
        [*command, "-q", *args], input=stdin, check=True, capture_output=True, text=True, timeout=60
    )


def site() -> str:
    """The broker site's user-name suffix (``ROOST_BROKER_SITE``; roost_shared.publishers)."""
    return os.environ.get("ROOST_BROKER_SITE", "")


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names (``/`` when it names none)."""
    path = urlparse(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def agent_url(admin_url: str, names: AgentBusNames, password: str) -> str:
    """The admin URL with the agent's user and password instead of the admin's."""
    parsed = urlparse(admin_url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{quote(names.user, safe='')}:{quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


async def declare_topology(admin_url: str, names: AgentBusNames) -> None:
    """The agent's exchanges and queues, bound into the shared exchanges (idempotent)."""
    connection = await aio_pika.connect(admin_url)
    async with connection:
        channel = await connection.channel()
        shared = {
            name: await channel.declare_exchange(name, kind, durable=True)
            for name, kind in (
                (EVENTS_EXCHANGE, ExchangeType.TOPIC),
                (COMMANDS_EXCHANGE, ExchangeType.DIRECT),
                (DEAD_EXCHANGE, ExchangeType.DIRECT),
                (HEARTBEAT_EXCHANGE, ExchangeType.DIRECT),
                (SM_EXCHANGE, ExchangeType.DIRECT),
            )
        }
        out = await channel.declare_exchange(names.exchange, ExchangeType.TOPIC, durable=True)
        for destination, key in (
            (EVENTS_EXCHANGE, AGENT_EVENTS),
            (HEARTBEAT_EXCHANGE, HEARTBEAT_KEY),
            (SM_EXCHANGE, HELLO_KEY),
            (DEAD_EXCHANGE, names.queue),  # what its consumer parks, into its parked queue
        ):
            await shared[destination].bind(out, routing_key=key)
        inbound = await channel.declare_exchange(names.inbound, ExchangeType.DIRECT, durable=True)
        mac_hex = names.id
        await inbound.bind(shared[HEARTBEAT_EXCHANGE], routing_key=probe_key(mac_hex))
        await inbound.bind(shared[SM_EXCHANGE], routing_key=agent_link_key(mac_hex))
        # The command queue exactly as roost_shared.bus.Consumer declares an agent's (classic),
        # so an agent that ran with shared credentials before finds it unchanged.
        queue = await channel.declare_queue(
            names.queue,
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": DEAD_EXCHANGE,
                "x-dead-letter-routing-key": names.queue,
            },
        )
        await queue.bind(shared[COMMANDS_EXCHANGE], routing_key=names.queue)
        parked = await channel.declare_queue(
            names.parked, durable=True, arguments={"x-queue-type": "classic"}
        )
        await parked.bind(shared[DEAD_EXCHANGE], routing_key=names.queue)


async def delete_topology(admin_url: str, names: AgentBusNames) -> None:
    """Delete the agent's exchanges (and so their bindings) and queues."""
    connection = await aio_pika.connect(admin_url)
    async with connection:
        channel = await connection.channel()
        for exchange in (names.exchange, names.inbound):
            await channel.exchange_delete(exchange)
        for queue in (names.queue, names.parked):
            await channel.queue_delete(queue)


async def add(mac: str, admin_url: str) -> str:
    """Provision the agent with this MAC; returns its AMQP URL (with a new password)."""
    return (await add_many([mac], admin_url))[mac]


async def add_many(macs: list[str], admin_url: str) -> dict[str, str]:
    """Provision the agents with these MACs at once; returns each one's AMQP URL (with a new
    password) by MAC."""
    vhost = vhost_of(admin_url)
    users, permissions, urls = [], [], {}
    for mac in macs:
        names = AgentBusNames.of(mac, site())
        password = secrets.token_urlsafe(24)
        await declare_topology(admin_url, names)
        users.append(brokerusers.user_definition(names.user, password, USER_LIMITS))
        configure, write, read = names.permissions()
        permissions.append(
            {
                "user": names.user,
                "vhost": vhost,
                "configure": configure,
                "write": write,
                "read": read,
            }
        )
        urls[mac] = agent_url(admin_url, names, password)
    # Only hashes go to rabbitmqctl, on its stdin: no password on a command line or in a file.
    brokerusers.import_definitions({"users": users, "permissions": permissions})
    return urls


async def remove(mac: str, admin_url: str) -> None:
    """Remove the agent's user (its open connections are closed) and its bus resources."""
    names = AgentBusNames.of(mac, site())
    try:
        rabbitmqctl("close_all_user_connections", names.user, "host deleted")
        rabbitmqctl("delete_user", names.user)
    except subprocess.CalledProcessError as exc:
        if "does not exist" not in (exc.stderr or "") + (exc.stdout or ""):
            raise
    await delete_topology(admin_url, names)


def main(argv: list[str] | None = None) -> int:
    """``add MAC`` prints the agent's environment lines; ``remove MAC`` removes it."""
    parser = argparse.ArgumentParser(prog="python -m roost_agent.credentials", description=__doc__)
    parser.add_argument("action", choices=["add", "remove"])
    parser.add_argument("mac", help="the host's management MAC (02:00:00:00:00:01)")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("ROOST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="AMQP URL of a user allowed to declare exchanges (default: ROOST_AMQP_URL)",
    )
    args = parser.parse_args(argv)
    if args.action == "add":
        url = asyncio.run(add(args.mac, args.admin_url))
        print(f"ROOST_AMQP_URL={url}\nROOST_BUS_SECURED=true\nROOST_MGMT_MAC={args.mac.lower()}")
    else:
        asyncio.run(remove(args.mac, args.admin_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
