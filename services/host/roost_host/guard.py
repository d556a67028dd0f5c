"""Which heartbeats to believe: each host's key, source address and replay state.

The receive path runs 10,000 times a second at 1,000 hosts, so :meth:`HeartbeatGuard.check`
works on the raw datagram: its length, the MAC bytes at a fixed offset (one dict lookup gives
the host's key, address and stream), one string compare for the source, one keyed BLAKE2s, one
``struct`` unpack, then :meth:`roost_shared.replay.Stream.check` (integer compares). Refusals
are plain integer counts, moved into ``roost_heartbeats_refused_total{reason}`` by the link
once a second, and each reason is logged at most once a minute.

* **Key**: the host's own (:func:`roost_shared.hostkeys.host_key` of the site secret and its
  MAC), derived once when the host is learned. With ``heartbeat_insecure`` (no site secret)
  signatures are not checked, but replay and source rules still apply.
* **Source**: a UDP heartbeat must come from the host's management address (``mgmt_ip`` in its
  inventory record). A host without one is not source-checked; ``heartbeat_check_source``
  false turns the check off where the network rewrites sources (a Kubernetes NodePort).
* **Replay**: per host, boot id and strictly increasing sequence per path
  (:mod:`roost_shared.replay`).

Only hosts in the inventory have an entry, so a flood of datagrams for invented MACs costs a
dict miss each and no memory.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from roost_shared.heartbeat import FORMAT, MAC_AT, MAGIC, SIGNED_SIZE, SIZE, Kind, signer
from roost_shared.hostkeys import host_key, mac_bytes
from roost_shared.metrics import Metrics
from roost_shared.replay import Refusal, Stream

log = logging.getLogger(__name__)

#: Each refusal reason is logged at most this often.
LOG_EVERY_S = 60.0

#: ``(kind, mac 6 bytes, seq, boot 16 bytes)`` of an accepted heartbeat.
Fields = tuple[int, bytes, int, bytes]


@dataclass(slots=True)
class _Host:
    mac: str
    #: Keyed with the host's key, copied per heartbeat (None: signatures not checked).
    signer: Any
    source: str | None
    stream: Stream = field(default_factory=Stream)


class HeartbeatGuard:
    """Authenticates heartbeats, checks their source and drops replays."""

    def __init__(
        self,
        secret: bytes | None,
        metrics: Metrics,
        *,
        check_source: bool = True,
        boot_window_s: float = 60.0,
    ) -> None:
        self.secret = secret
        self.check_source = check_source
        self.window_ns = int(boot_window_s * 1e9)
        self.hosts: dict[bytes, _Host] = {}
        self.counts: dict[Refusal, int] = dict.fromkeys(Refusal, 0)
        self._refused = metrics.counter(
            "heartbeats_refused",
            "Heartbeats dropped before they could count for a host, by reason: malformed, "
            "unsigned, bad-signature, unknown-host, source (not from the host's management "
            "address), replay, old-boot, stale (a new boot stamped outside the clock window).",
            ["reason"],
        )
        self._refused_by = {r: self._refused.labels(r.value) for r in Refusal}
        self._logged_at: dict[Refusal, float] = {}

    # The hosts -----------------------------------------------------------------------------

    def learn(self, mac: str, mgmt_ip: str | None) -> None:
        """A host of the inventory (added or changed): its key and address. Its replay state
        survives a change of address."""
        raw = mac_bytes(mac)
        entry = self.hosts.get(raw)
        source = mgmt_ip if self.check_source and mgmt_ip else None
        if entry is None:
            keyed = signer(host_key(self.secret, raw)) if self.secret is not None else None
            self.hosts[raw] = _Host(mac, keyed, source)
        else:
            entry.source = source

    def keep(self, macs: set[str]) -> None:
        """Forget every host not in ``macs`` (deleted from the inventory)."""
        keep = {mac_bytes(m) for m in macs}
        for raw in set(self.hosts) - keep:
            del self.hosts[raw]

    # The receive path ------------------------------------------------------------------------

    def check(self, data: bytes, path: int, source: str | None, now_ns: int) -> Fields | None:
        """The fields of a heartbeat to believe, or None (counted). ``path`` 0 is UDP (with
        ``source``, the sender's address), 1 the bus (no address: the broker authenticated
        the publisher)."""
        size = len(data)
        if size != SIGNED_SIZE and (size != SIZE or self.secret is not None):
            return self._refuse(Refusal.unsigned if size == SIZE else Refusal.malformed, data)
        entry = self.hosts.get(data[MAC_AT])
        if entry is None:
            return self._refuse(Refusal.unknown_host, data)
        if source is not None and entry.source is not None and source != entry.source:
            return self._refuse(Refusal.source, data, source, entry)
        keyed = entry.signer
        if keyed is not None:
            h = keyed.copy()
            h.update(data[:SIZE])
            if not hmac.compare_digest(h.digest(), data[SIZE:]):
                return self._refuse(Refusal.bad_signature, data, source, entry)
        magic, kind, mac, seq, sent_ns, boot, _probe = FORMAT.unpack_from(data)
        if magic != MAGIC or kind > Kind.stopping:
            return self._refuse(Refusal.malformed, data)
        refusal = entry.stream.check(boot, seq, path, sent_ns, now_ns, self.window_ns)
        if refusal is not None:
            return self._refuse(refusal, data, source, entry)
        return kind, mac, seq, boot

    def _refuse(
        self,
        reason: Refusal,
        data: bytes,
        source: str | None = None,
        entry: _Host | None = None,
    ) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[reason] = now
            who = entry.mac if entry is not None else data[MAC_AT].hex(":")
            via = f" from {source}" if source else ""
            log.warning("dropped a heartbeat (%s) for %s%s", reason.value, who, via)
        return None

    def flush(self) -> None:
        """Move the counts into the Prometheus counter."""
        for reason, n in self.counts.items():
            if n:
                self._refused_by[reason].inc(n)
                self.counts[reason] = 0
