"""Who may publish what: every consumer checks the broker-validated sender of an event.

Each service connects to the broker as its own user ``roost-<service>``; an agent as its own
per-host user ``agent-<mac hex>`` (:mod:`roost_shared.agentbus`) or, where per-host credentials
are not provisioned, as the shared agent user ``roost-agent``. Every publish carries the AMQP
``user_id`` property, which RabbitMQ refuses unless it is the connection's own user: so
``user_id`` is the one thing about a message a publisher cannot make up. A consumer believes an
event only from its owner:

* ``<service>.*`` (``config.host.updated``, ``host.state.changed``, ``fault.alarm.raised``, …)
  only from that service: the event type's first word names its owner;
* ``fault.alarm.set``, ``fault.alarm.clear`` and ``fault.log.write`` from any service (the fault
  service then lets an alarm be changed or cleared only by the service that raised it);
* ``agent.*`` only from an agent, and from a per-host agent only about its own host.

Several sites may share one broker (a test run or a benchmark beside ``make run``): a site
named ``<site>`` suffixes its users ``.<site>`` (``roost-config.<site>``), and each site's users
have permissions only on its own virtual hosts.

The envelope's ``source`` is the publisher's own word (a free CloudEvents URI), so it is not
what is checked. A message a consumer moved itself (to a retry queue, to parking, a replayed
dead letter) carries its own user id and names the original sender in ``x-roost-sender``:
that header is believed only on a message published by the consumer's own user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The services that connect as ``roost-<service>``.
SERVICES = ("config", "fault", "host", "service", "software", "dashboard")
#: Agents without per-host credentials share this user (it may publish only agent reports).
AGENT_USER = "roost-agent"
#: The original sender of a message a consumer re-published (retry, parking, replay).
SENDER_HEADER = "x-roost-sender"
#: Published by any service, for the fault service.
TO_FAULT = frozenset({"fault.alarm.set", "fault.alarm.clear", "fault.log.write"})

_SITE = r"(?:\.[0-9a-z-]{1,32})?"
_SERVICE_USER = re.compile(rf"^roost-([a-z]+){_SITE}$")
_AGENT_USER = re.compile(rf"^agent-([0-9a-f]{{12}}){_SITE}$")


def user_of(service: str, site: str = "") -> str:
    """The broker user a process of this service connects as (``agent``: the shared agent user)
    at ``site`` (empty: the broker's only site)."""
    user = AGENT_USER if service == "agent" else f"roost-{service}"
    return f"{user}.{site}" if site else user


@dataclass(frozen=True, slots=True)
class Sender:
    """Who published a message, as the broker vouches for it."""

    user: str
    service: str | None = None  # a Roost service
    agent: str | None = None  # a per-host agent's id (MAC hex)
    any_agent: bool = False  # the shared agent user

    @classmethod
    def of(cls, user: str | None) -> Sender | None:
        if not user:
            return None
        if match := _AGENT_USER.match(user):
            return cls(user, agent=match.group(1))
        if match := _SERVICE_USER.match(user):
            if match.group(1) == "agent":
                return cls(user, any_agent=True)
            if match.group(1) in SERVICES:
                return cls(user, service=match.group(1))
        return cls(user)

    @staticmethod
    def service_of(user: str | None) -> str | None:
        """The Roost service a broker user is, if it is one."""
        sender = Sender.of(user)
        return sender.service if sender is not None else None

    @property
    def is_agent(self) -> bool:
        return self.any_agent or self.agent is not None


def sender_user(
    user_id: str | None, headers: dict[str, object] | None, own_user: str
) -> str | None:
    """The user who really sent a message: its ``user_id``, or for a message re-published by
    this consumer's own user, the sender it recorded."""
    if user_id and user_id == own_user:
        recorded = (headers or {}).get(SENDER_HEADER)
        if isinstance(recorded, bytes):
            recorded = recorded.decode(errors="replace")
        if isinstance(recorded, str) and recorded:
            return recorded
    return user_id or None


def refusal(event_type: str, user: str | None, claimed_host: str | None) -> str | None:
    """Why an event of ``event_type`` from broker user ``user`` must not be believed, or None.

    ``claimed_host``: the agent id (MAC hex) an agent report says it is about, if it is one.
    """
    sender = Sender.of(user)
    if sender is None:
        return f"{event_type} carries no broker user id: its publisher is unknown"
    owner = event_type.split(".", 1)[0]
    if owner == "agent":
        if not sender.is_agent:
            return f"{event_type} is an agent report but {sender.user} is not an agent"
        if sender.agent is not None and claimed_host != sender.agent:
            return f"agent {sender.agent} sent {event_type} about host {claimed_host or 'none'}"
        return None
    if sender.service is None:
        return f"{event_type} from {sender.user}, which is not a Roost service"
    if event_type in TO_FAULT or sender.service == owner:
        return None
    return f"{event_type} belongs to the {owner} service, not to {sender.service}"
