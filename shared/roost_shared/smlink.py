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
is counted and dropped (a late hello has nothing to replay). Signed with the host's link key
(:func:`roost_shared.hostkeys.link_key`), both ways::

    "RSL1" | host MAC 6 bytes | HMAC-SHA256(link key, JSON)[:16] | JSON

The MAC in front selects the key before anything is parsed (a flood of unsigned or wrongly
signed hellos costs one HMAC each and no JSON). A hello carries the agent's boot id, a
sequence number strictly increasing across the agent's restarts within a boot and its wall
clock (``ts``): the service service drops replays as the host service does heartbeats
(:mod:`roost_shared.replay`); an agent drops a grant not newer than the last one on its path.
"""

from __future__ import annotations

import hmac
import json
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roost_shared.catalog import HOSTNAME_PATTERN, MAC_PATTERN
from roost_shared.hostkeys import mac_bytes

SM_EXCHANGE = "roost.sm"
HELLO_KEY = "sm.hello"
LINK_TTL_MS = 1000
Path = Literal["udp", "bus"]
MAGIC = b"RSL1"
TAG_SIZE = 16
HEADER = len(MAGIC) + 6 + TAG_SIZE
#: Larger datagrams or messages are not read at all.
MAX_SIZE = 4096


class BadLinkMessage(ValueError):
    """Bytes that are not a hello or a grant."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Hello(_Wire):
    """Agent → service service: "this host's agent is here, on this path"."""

    t: Literal["hello"] = "hello"
    mac: str = Field(pattern=MAC_PATTERN)
    host: str = Field(pattern=HOSTNAME_PATTERN)
    seq: int = Field(ge=0, lt=1 << 64)
    path: Path
    #: The agent's boot id (with ``seq``, what replays are told apart by).
    boot: str = Field("", max_length=64)
    #: The agent's wall clock (ns) when sent: checked only when a new boot starts.
    ts: int = Field(0, ge=0, lt=1 << 64)


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


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[:TAG_SIZE]


def encode(message: Hello | Grant, key: bytes | None = None, mac: str | None = None) -> bytes:
    """The wire form; signed with ``key`` (the link key of the host ``mac``: a hello's own)."""
    body = message.model_dump_json().encode()
    if key is None:
        return body
    owner = mac or getattr(message, "mac", None)
    if owner is None:
        raise ValueError("a signed grant needs the MAC of the host it is for")
    return MAGIC + mac_bytes(owner) + _tag(key, body) + body


def signed_by(data: bytes) -> bytes | None:
    """The 6 MAC bytes a signed message names (whose key to check it with), or None."""
    if len(data) > HEADER and data[:4] == MAGIC:
        return data[4:10]
    return None


def _body(data: bytes, key: bytes | None) -> bytes:
    """The JSON of a message: with ``key`` only if signed with it; without, either form."""
    if len(data) > MAX_SIZE:
        raise BadLinkMessage(f"{len(data)} bytes, more than {MAX_SIZE}")
    if signed_by(data) is None:
        if key is not None:
            raise BadLinkMessage("unsigned")
        return data
    body = data[HEADER:]
    if key is not None and not hmac.compare_digest(_tag(key, body), data[10:HEADER]):
        raise BadLinkMessage("bad signature")
    return body


def decode_hello(data: bytes, key: bytes | None = None) -> Hello:
    """A hello; with ``key``, only one signed with it (by the MAC it names, checked here)."""
    hello = _decode(Hello, _body(data, key))
    signer = signed_by(data)
    if signer is not None and mac_bytes(hello.mac) != signer:
        raise BadLinkMessage("signed for another host")
    return hello


def decode_grant(data: bytes, key: bytes | None = None) -> Grant:
    return _decode(Grant, _body(data, key))


M = TypeVar("M", bound=_Wire)


def _decode(model: type[M], data: bytes) -> M:
    try:
        return model.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise BadLinkMessage(str(exc).splitlines()[0]) from exc


def agent_link_key(mac: str) -> str:
    """Routing key of grants for the agent with this management MAC."""
    return "sm." + mac.replace(":", "").lower()
