"""Per-host heartbeat bookkeeping and the failure rules, without any I/O.

Each host is heard on two paths (see ``roost_shared.heartbeat``): UDP every ``period`` and the
bus (a slow passive heartbeat, plus answers to probes). :meth:`Liveness.assess` turns the
times a host was last heard into what the monitor should do:

* UDP silent for ``probe_after`` → **probe** the host over the bus (it answers at once if its
  bus path is alive); while UDP stays silent, probe again every ``probe_interval``.
* UDP silent for ``fail_after`` *and* a probe unanswered for ``probe_timeout`` → **silent**
  on every path: a failure candidate (the monitor still checks multi-node failure avoidance
  and the BMC before failing it).
* UDP silent for ``udp_loss`` while the bus answers → the UDP path is **lost** (alarm, degraded).
* Bus silent for ``bus_loss`` while UDP is fine → the bus path is **lost** (alarm, degraded).

Default timing (100 ms period): a dead host is silent on every path 250-350 ms after it died
(probe at 200 ms of UDP silence, 150 ms to answer; 300 ms of UDP silence), against StarlingX's
~1 s default (100 ms x 10 misses). A lossy UDP path costs probes, never a failure: at 10 % loss,
three lost datagrams in a row happen once per ~1,000 heartbeats, and the bus answers them.
All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Path(StrEnum):
    udp = "udp"
    bus = "bus"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Heartbeat timing in seconds (built from the ``ROOST_HEARTBEAT_*`` settings)."""

    period: float = 0.1
    probe_after: float = 0.2
    fail_after: float = 0.3
    probe_timeout: float = 0.15
    probe_interval: float = 0.15
    udp_loss: float = 1.0
    bus_loss: float = 15.0


@dataclass(frozen=True, slots=True)
class Assessment:
    """What a host's heartbeats say at one instant."""

    probe_due: bool = False
    #: A probe is out and may still be answered (its host is not decided yet).
    pending: bool = False
    #: Silent on every path: UDP past ``fail_after`` and a probe unanswered past its timeout.
    silent: bool = False
    udp_lost: bool = False
    bus_lost: bool = False
    #: UDP just became silent past ``fail_after``: what a one-path detector would fail (counted
    #: once per silence, for comparison).
    udp_suspected: bool = False

    @property
    def alive(self) -> bool:
        return not self.silent


@dataclass(slots=True)
class Liveness:
    """When one host was last heard on each path, and its outstanding probe."""

    mac: str
    last_udp: float
    last_bus: float
    boot_id: bytes | str | None = None  # compared only: the raw 16 bytes on the hot path
    probe_id: int = 0
    probe_sent: float | None = None
    #: When the host was first heard (UDP or bus) after having been silent on every path.
    returned_at: float | None = None
    seq: int = 0
    udp_count: int = 0
    bus_count: int = 0
    silent_since: float | None = field(default=None)
    udp_suspect: bool = False

    @classmethod
    def new(cls, mac: str, now: float) -> Liveness:
        """A host we start tracking now: given a full threshold before anything is concluded
        (a service that just started has heard nobody yet)."""
        return cls(mac, last_udp=now, last_bus=now)

    def heard(self, now: float, path: Path, boot_id: bytes | str, seq: int = 0) -> bool:
        """Record a heartbeat; True when the host's boot id changed (it restarted)."""
        if self.silent_since is not None:
            self.returned_at = now
            self.silent_since = None
        if path is Path.udp:
            self.last_udp = now
            self.udp_suspect = False
            self.seq = seq
            self.udp_count += 1
        else:
            self.last_bus = now
            self.bus_count += 1
        rebooted = self.boot_id is not None and boot_id != self.boot_id
        self.boot_id = boot_id
        return rebooted

    def outstanding(self) -> bool:
        return self.probe_sent is not None and self.last_bus < self.probe_sent

    def assess(self, now: float, t: Thresholds) -> Assessment:
        udp_silence = now - self.last_udp
        outstanding = self.outstanding()
        probe_age = now - self.probe_sent if self.probe_sent is not None else 0.0
        probe_due = (
            udp_silence >= t.probe_after
            and not outstanding
            and (self.probe_sent is None or probe_age >= t.probe_interval)
        )
        silent = udp_silence >= t.fail_after and outstanding and probe_age >= t.probe_timeout
        if silent and self.silent_since is None:
            self.silent_since = now
        suspected = udp_silence >= t.fail_after and not self.udp_suspect
        if suspected:
            self.udp_suspect = True
        return Assessment(
            udp_suspected=suspected,
            probe_due=probe_due,
            pending=outstanding and probe_age < t.probe_timeout,
            silent=silent,
            udp_lost=udp_silence >= t.udp_loss and not silent,
            bus_lost=now - self.last_bus >= t.bus_loss and not silent,
        )

    def probe(self, now: float) -> int:
        """Start a probe; its number (echoed by the agent's answer)."""
        self.probe_id = (self.probe_id + 1) & 0xFFFFFFFF
        self.probe_sent = now
        return self.probe_id

    def alive_now(self, now: float, t: Thresholds) -> bool:
        """Heard on some path recently enough that nobody should power-cycle it."""
        return now - self.last_udp < t.fail_after or (
            now - self.last_bus < t.fail_after + t.probe_timeout
        )


def mnfa_group(silent: list[str], held: list[str], threshold: int) -> bool:
    """Multi-node failure avoidance: true when the hosts silent together (newly silent plus
    those already held) reach ``threshold`` — a site or network fault, not host deaths (as
    StarlingX's ``mnfa_threshold``, default 2)."""
    return threshold > 0 and len(set(silent) | set(held)) >= threshold
