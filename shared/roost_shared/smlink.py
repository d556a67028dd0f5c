"""The service-management link: agents and the service service, over two independent paths.

An agent that runs service instances says ``hello`` to the service service every
``link_period_ms`` over **UDP** (``ROOST_SM_LINK_ADDR``, port 8198 all-in-one) and every
``link_bus_period_ms`` over **the bus** (exchange ``roost.sm``, key ``sm.hello``). The service
service answers each hello on the path it came from with a ``grant``: the activity leases this
host's active instances hold (instance id, fencing token, expiry). So:

* each side learns, per path, whether the other is reachable: a path silent while the other
  works is alarm **400.005** (communication failure) raised by the service service, and nothing
  else changes;
* an active instance keeps its activity only while grants keep arriving on *some* path: the
  agent steps it down (restarts it as standby, see :mod:`roost_agent.instances`) before its
  lease expires, so a standby granted the lease after expiry never runs next to it.

Lease expiries are wall-clock UTC milliseconds, judged by the agent with its own clock minus a
margin (``ROOST_LEASE_MARGIN_S``): sites keep their hosts' clocks in step (NTP/PTP, as StarlingX
does); a skew larger than the margin is what this design cannot absorb. A delayed or replayed
grant carries its old expiry, so it can never extend a lease beyond what the controller granted.

Wire format: one small JSON object (≤ a few hundred bytes) on both paths, like heartbeats: not
events, no confirms, transient, a 1 s TTL on the bus, consumed without acks; an undecodable one
is counted and dropped (a late hello has nothing to replay). Unsigned, like heartbeats without
``ROOST_HEARTBEAT_KEY`` (see the host service's notes).
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SM_EXCHANGE = "roost.sm"
HELLO_KEY = "sm.hello"
LINK_TTL_MS = 1000
Path = Literal["udp", "bus"]


class BadLinkMessage(ValueError):
    """Bytes that are not a hello or a grant."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Hello(_Wire):
    """Agent → service service: "this host's agent is here, on this path"."""

    t: Literal["hello"] = "hello"
    mac: str
    host: str
    seq: int = Field(ge=0)
    path: Path


class Lease(_Wire):
    """One active instance's lease: ``i`` instance id, ``k`` fencing token, ``e`` expiry (UTC
    epoch ms)."""

    i: str
    k: int
    e: int


class Grant(_Wire):
    """Service service → agent: the answer to hello ``seq`` with this host's held leases."""

    t: Literal["grant"] = "grant"
    seq: int
    path: Path
    leases: list[Lease] = Field(default_factory=list)


def encode(message: Hello | Grant) -> bytes:
    return message.model_dump_json().encode()


def decode_hello(data: bytes) -> Hello:
    return _decode(Hello, data)


def decode_grant(data: bytes) -> Grant:
    return _decode(Grant, data)


M = TypeVar("M", bound=_Wire)


def _decode(model: type[M], data: bytes) -> M:
    try:
        return model.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise BadLinkMessage(str(exc).splitlines()[0]) from exc


def agent_link_key(mac: str) -> str:
    """Routing key of grants for the agent with this management MAC."""
    return "sm." + mac.replace(":", "").lower()
