"""Names of an agent's own bus resources when it runs with per-host credentials.

An agent with per-host credentials (RabbitMQ user ``agent-<id>``) may write only to its own
exchange and read only its own queues; the control plane binds them into the shared topology
(``roost_agent.credentials`` provisions them; docs/operator-guide.md, "Per-host bus
credentials"). ``<id>`` is the management MAC without colons, lower case: the identity its
commands are already keyed by (``agent.<id>``, :func:`roost_shared.commands.agent_key`), known
before the host has a hostname (discovery) and unchanged when the operator renames it.

* ``agent.<id>``         topic exchange the agent publishes everything to; bound into
  ``roost.events`` (``agent.*.*``), ``roost.heartbeat`` (``heartbeat``), ``roost.sm``
  (``sm.hello``) and ``roost.dead`` (``agent.<id>``: its parked commands). Routing keys survive
  exchange-to-exchange bindings, so consumers bind as before; the broker still reports the
  exchange the publisher used (``message.exchange``), which is how consumers learn who sent it.
* ``agent.<id>.in``      direct exchange its server-side private queues bind to; bound from
  ``roost.heartbeat`` (``probe.<id>``) and ``roost.sm`` (``sm.<id>``).
* ``agent.<id>``         also its command queue (bound to ``roost.commands`` by the control
  plane), ``agent.<id>.parked`` beside it.
* ``agent.<id>.probe.<hex>``, ``agent.<id>.link.<hex>``  its exclusive probe and grant queues.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: An exchange named like this is one agent's own; group 1 is the agent's id.
_AGENT_EXCHANGE = re.compile(r"^agent\.([0-9a-f]{12})$")


def agent_id(mac: str) -> str:
    """The bus identity of the agent with this management MAC (MAC hex, lower case)."""
    return mac.replace(":", "").replace("-", "").lower()


def sender_id(exchange: str | None) -> str | None:
    """The id of the agent whose own exchange a message was published to, else None (the
    message came through a shared exchange: published by the control plane or a shared-
    credentials agent)."""
    match = _AGENT_EXCHANGE.match(exchange or "")
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class AgentBusNames:
    """Every bus name and permission of one agent in secured mode."""

    id: str
    #: The broker site's suffix of the user name (roost_shared.publishers), empty for most.
    site: str = ""

    @classmethod
    def of(cls, mac: str, site: str = "") -> AgentBusNames:
        return cls(agent_id(mac), site)

    @property
    def user(self) -> str:
        return f"agent-{self.id}.{self.site}" if self.site else f"agent-{self.id}"

    @property
    def exchange(self) -> str:
        """Outbound: everything the agent publishes goes here."""
        return f"agent.{self.id}"

    @property
    def inbound(self) -> str:
        """What its private queues bind to (probes, service-link grants)."""
        return f"agent.{self.id}.in"

    @property
    def queue(self) -> str:
        """Its command queue (same name as the commands' routing key)."""
        return f"agent.{self.id}"

    @property
    def parked(self) -> str:
        return f"agent.{self.id}.parked"

    def private_queue(self, purpose: str, suffix: str) -> str:
        """An exclusive queue of its own (``purpose`` probe or link, ``suffix`` hex)."""
        return f"agent.{self.id}.{purpose}.{suffix}"

    def permissions(self) -> tuple[str, str, str]:
        """RabbitMQ ``configure``, ``write`` and ``read`` regexes of the agent's user.

        configure: only its exclusive queues (everything else it declares passively, which
        needs no permission). write: its outbound exchange (basic.publish) and its exclusive
        queues (queue.bind needs write on the queue). read: its command queue and exclusive
        queues (basic.consume) and its inbound exchange (queue.bind needs read on the source).
        Nothing of ``roost.*``: it can neither publish there nor bind a queue to another
        host's commands.
        """
        mine = rf"agent\.{self.id}"
        private = rf"{mine}\.(probe|link)\.[0-9a-f]{{8,32}}"
        return (
            f"^{private}$",
            f"^({mine}|{private})$",
            rf"^({mine}|{mine}\.in|{private})$",
        )
