"""Heartbeats between agents and the host service: the wire format and the bus names.

A heartbeat says "this node's agent is alive", nothing more. Agents send them on two
independent paths, and the host service declares a host failed only when every path is silent:

* **UDP** (the management-network path): one datagram every ``heartbeat_period_ms`` (100 ms)
  straight to the host service (``ROOST_HEARTBEAT_ADDR``, port 8199 all-in-one). Cheap enough
  for 1,000 hosts at 10 Hz (~5 % of a core to receive with uvloop).
* **The bus**: RabbitMQ cannot carry 10 Hz from every host within the budget measured here
  (~2,000 small messages/s end to end), so the bus path is a slow passive heartbeat (every
  ``bus_heartbeat_period_ms``, 5 s) plus an **on-demand probe**: when a host's UDP heartbeats
  stop, the host service publishes ``probe.<mac hex>`` and the agent answers at once on the
  bus. That gives a fast answer on the second path exactly when it is needed, at one message per
  5 s per host otherwise (ARCHITECTURE: "the bus path runs slower or aggregated").

Heartbeats are not events: they are published without confirms, transient, with a 1 s TTL, to
their own exchange ``roost.heartbeat``, and consumed without acks. A heartbeat that cannot be
decoded is counted and dropped: a late or broken heartbeat has no value to replay, so the
dead-letter rule for events does not apply (a steady count of undecodable heartbeats is a
misconfigured sender, visible in ``roost_heartbeats_rejected_total``).

Wire format (big-endian, 47 bytes, the same on both paths)::

    magic "RHB2" | kind u8 | mac 6 bytes | seq u64 | sent_ns u64 | boot 16 bytes | probe u32
    | keyed BLAKE2s-128 of the above with the host's key (16 bytes)

``kind`` is 0 for a periodic heartbeat, 1 for the answer to probe ``probe``, 2 for "I am
stopping" (a clean shutdown or reboot). ``boot`` is the agent's boot id (a new one means the
node restarted). ``seq`` increases strictly with every message the agent sends on either path:
it is ``max(previous + 1, CLOCK_MONOTONIC ns)``, so an agent restarted within the same boot
goes on above its predecessor. ``sent_ns`` is the sender's wall clock: only a heartbeat that
starts a boot the receiver does not know is checked against it (see
:mod:`roost_shared.replay`). The key is the host's own (:mod:`roost_shared.hostkeys`); the
receiver drops unsigned, wrongly signed, replayed and wrongly sourced datagrams, and counts
each kind.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from roost_shared.hostkeys import mac_bytes

__all__ = ["mac_bytes"]  # re-exported: the receive path keys hosts by these bytes

HEARTBEAT_EXCHANGE = "roost.heartbeat"
#: Routing key of heartbeats on the bus (agents → host service).
HEARTBEAT_KEY = "heartbeat"
#: Time-to-live of a heartbeat message in the broker: an older one says nothing useful.
HEARTBEAT_TTL_MS = 1000

MAGIC = b"RHB2"
FORMAT = struct.Struct("!4sB6sQQ16sI")
#: The unsigned body's size; a signed heartbeat is ``SIGNED_SIZE``.
SIZE = FORMAT.size
MAC_SIZE = 16
SIGNED_SIZE = SIZE + MAC_SIZE
#: Where the MAC sits in a heartbeat (read before anything else: it selects the key).
MAC_AT = slice(5, 11)


class Kind(IntEnum):
    periodic = 0
    probe_reply = 1
    #: Sent (on both paths) by an agent stopping cleanly, e.g. for a reboot: the host service
    #: then waits for it to come back before fencing it.
    stopping = 2


class BadHeartbeat(ValueError):
    """A datagram or message that is not a valid heartbeat (wrong size, magic or signature)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    mac: str  # "02:00:00:00:00:01"
    seq: int
    sent_ns: int
    boot_id: str
    kind: Kind = Kind.periodic
    probe: int = 0


def probe_key(mac: str) -> str:
    """The routing key of probes for the agent with this management MAC."""
    return "probe." + mac.replace(":", "").lower()


def boot_bytes(boot_id: str) -> bytes:
    """A boot id as the 16 bytes the wire carries (and replay state compares)."""
    try:
        return uuid.UUID(boot_id).bytes
    except ValueError:
        # Not a UUID (a custom boot id): a stable 16-byte digest of it still tells boots apart.
        return hashlib.sha256(boot_id.encode()).digest()[:16]


def encode(hb: Heartbeat, key: bytes | None = None) -> bytes:
    """The wire form of ``hb``, signed when ``key`` is given."""
    body = FORMAT.pack(
        MAGIC,
        int(hb.kind),
        bytes.fromhex(hb.mac.replace(":", "")),
        hb.seq & 0xFFFFFFFFFFFFFFFF,
        hb.sent_ns,
        boot_bytes(hb.boot_id),
        hb.probe & 0xFFFFFFFF,
    )
    if key:
        body += sign(body, key)
    return body


def sign(body: bytes, key: bytes) -> bytes:
    """The 16-byte signature of a heartbeat body: keyed BLAKE2s (a MAC by design, RFC 7693),
    chosen over HMAC-SHA256 for the receive path's sake: ~0.7 µs a datagram against ~4.8 µs
    (bench/heartbeat_verify.py). ``key``: at most 32 bytes (a host key is 32)."""
    return hashlib.blake2s(body, key=key, digest_size=MAC_SIZE).digest()


def signer(key: bytes) -> hashlib.blake2s:
    """A keyed hasher to ``copy()`` per heartbeat (the key set up once: half the cost)."""
    return hashlib.blake2s(key=key, digest_size=MAC_SIZE)


def unpack(data: bytes, key: bytes | None = None) -> tuple[int, bytes, int, int, bytes, int]:
    """The raw fields ``(kind, mac 6 bytes, seq, sent_ns, boot 16 bytes, probe)`` of a
    heartbeat, checked (size, magic, kind, and the signature with ``key``) but not turned into
    strings: the host service's receive path runs 10,000 times a second and only compares
    bytes. Without ``key`` a signed heartbeat's signature is not checked."""
    if key:
        if len(data) != SIGNED_SIZE:
            raise BadHeartbeat(f"expected {SIGNED_SIZE} bytes (signed), got {len(data)}")
        if not hmac.compare_digest(sign(data[:SIZE], key), data[SIZE:]):
            raise BadHeartbeat("bad signature")
    elif len(data) != SIZE and len(data) != SIGNED_SIZE:
        raise BadHeartbeat(f"expected {SIZE} bytes, got {len(data)}")
    magic, kind, mac, seq, sent_ns, boot, probe = FORMAT.unpack_from(data)
    if magic != MAGIC:
        raise BadHeartbeat("not a Roost heartbeat")
    if kind > Kind.stopping:
        raise BadHeartbeat(f"unknown heartbeat kind {kind}")
    return kind, mac, seq, sent_ns, boot, probe


def decode(data: bytes, key: bytes | None = None) -> Heartbeat:
    """Parse (and, with ``key``, authenticate) one heartbeat; :class:`BadHeartbeat` otherwise."""
    if key:
        if len(data) != SIGNED_SIZE:
            raise BadHeartbeat(f"expected {SIGNED_SIZE} bytes (signed), got {len(data)}")
        body, tag = data[:SIZE], data[SIZE:]
        if not hmac.compare_digest(sign(body, key), tag):
            raise BadHeartbeat("bad signature")
    else:
        if len(data) not in (SIZE, SIGNED_SIZE):
            raise BadHeartbeat(f"expected {SIZE} bytes, got {len(data)}")
        body = data[:SIZE]
    magic, kind, mac, seq, sent_ns, boot, probe = FORMAT.unpack(body)
    if magic != MAGIC:
        raise BadHeartbeat("not a Roost heartbeat")
    try:
        kind = Kind(kind)
    except ValueError:
        raise BadHeartbeat(f"unknown heartbeat kind {kind}") from None
    return Heartbeat(
        mac=":".join(f"{b:02x}" for b in mac),
        seq=seq,
        sent_ns=sent_ns,
        boot_id=str(uuid.UUID(bytes=boot)),
        kind=kind,
        probe=probe,
    )


def probe_body(probe: int) -> bytes:
    """A probe's message body: its number, echoed in the agent's answer."""
    return struct.pack("!I", probe & 0xFFFFFFFF)


def probe_number(body: bytes) -> int:
    if len(body) != 4:
        raise BadHeartbeat(f"a probe is 4 bytes, got {len(body)}")
    return struct.unpack("!I", body)[0]
