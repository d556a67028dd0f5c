"""Replay protection for one sender's stream of signed datagrams (heartbeats, hellos).

Every message carries the sender's **boot id** and a **sequence number** that increases strictly
with every message it sends (on any path). Per sender the receiver keeps the current boot id,
the last sequence number accepted on each path, and the last :data:`RETIRED_BOOTS` boot ids
before the current one:

* the current boot and a sequence number not above the last one accepted on that path: a
  **replay** (or a datagram reordered on the way, which is worth nothing either): dropped;
* a retired boot id (a datagram captured before the sender's last reboots): dropped;
* a boot id neither current nor retired **starts a boot** only if the message's own wall-clock
  stamp lies within ``window_ns`` of the receiver's clock. That is what stops the one replay the
  two rules above cannot: after the receiver restarts (or a standby takes over) it knows no boot
  id, and a recording of a dead host's heartbeats would otherwise be taken as a new boot. With
  the window, a recording can be replayed for at most about the window's length after the
  sender died. Sites keep clocks in step already (activity leases rely on it); a sender whose
  clock is off by more than the window is refused, counted as ``stale``, until it is right.

The caller authenticates the message first: only a signed message may change the state here.
Nothing allocates on the accepted path of the current boot (a compare and a store).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

#: Boot ids remembered per sender besides the current one.
RETIRED_BOOTS = 8
PATHS = 2


class Refusal(StrEnum):
    """Why a datagram was dropped (the label of the receivers' refusal counters)."""

    malformed = "malformed"
    unsigned = "unsigned"
    unknown_host = "unknown-host"
    bad_signature = "bad-signature"
    source = "source"
    replay = "replay"
    old_boot = "old-boot"
    stale = "stale"
    #: A new sender while the receiver's table of senders is full.
    table_full = "table-full"


@dataclass(slots=True)
class Stream:
    """One sender's replay state."""

    boot: bytes | None = None
    seq: list[int] = field(default_factory=lambda: [0] * PATHS)
    retired: deque[bytes] = field(default_factory=lambda: deque(maxlen=RETIRED_BOOTS))

    def check(
        self, boot: bytes, seq: int, path: int, sent_ns: int, now_ns: int, window_ns: int
    ) -> Refusal | None:
        """None (and the state advanced) if the message is new; else why it is refused.
        ``path`` is 0 or 1; ``window_ns`` 0 turns the clock check off."""
        if boot == self.boot:
            last = self.seq
            if seq <= last[path]:
                return Refusal.replay
            last[path] = seq
            return None
        if boot in self.retired:
            return Refusal.old_boot
        if window_ns and abs(sent_ns - now_ns) > window_ns:
            return Refusal.stale
        if self.boot is not None:
            self.retired.append(self.boot)
        self.boot = boot
        self.seq = [0] * PATHS
        self.seq[path] = seq
        return None
