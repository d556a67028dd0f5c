"""Commands to a host's agent: direct exchange ``roost.commands``, one routing key per agent.

The key is ``agent.<management MAC without colons>``: the MAC names a node before it has a
hostname (a newly discovered node) and does not change when the operator renames it.
ARCHITECTURE.md said ``agent.<hostname>``; the MAC is used because discovery needs a stable
address before any hostname is assigned. Every command carries a deadline; an agent rejects an
expired command instead of running it late.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from roost_shared.events import Envelope, utcnow


def agent_key(mgmt_mac: str) -> str:
    """The routing key (and queue name stem) of the agent with this management MAC."""
    return "agent." + mgmt_mac.replace(":", "").lower()


def command(
    payload: BaseModel, *, source: str, subject: str, deadline_s: float, type: str | None = None
) -> Envelope:
    """A command envelope that expires ``deadline_s`` from now."""
    env = Envelope.of(payload, source=source, subject=subject, type=type)
    env.deadline = utcnow() + timedelta(seconds=deadline_s)
    return env


def expired(envelope: Envelope) -> bool:
    """True once a command's deadline has passed (it must then be rejected, not run)."""
    return envelope.deadline is not None and utcnow() > envelope.deadline
