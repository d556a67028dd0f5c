"""The heartbeat monitor: from heartbeats to host states.

Heartbeats only touch memory (:class:`~roost_host.liveness.Liveness` per host, keyed by the
management MAC); nothing per heartbeat goes to the database. A loop looks at every host each
``tick`` (a quarter of the heartbeat period, at most 25 ms): it probes hosts whose UDP
heartbeats stopped, and turns changes into transitions, each in its own transaction through
:class:`~roost_host.operations.HostOperations`, rechecked there against the stored state:

* a path lost while the other answers → its alarm (200.005 UDP, 200.009 bus) and ``degraded``;
  both healthy again → alarm cleared, ``available``;
* silent on every path → **multi-node failure avoidance** first: if other hosts are silent
  together with it (``mnfa_threshold``, 2 like StarlingX), none is failed: all are held
  ``degraded``, one alarm (200.030) says why, and they come back as their heartbeats do. A
  decision waits (at most one probe timeout) while another host's probe is still out, so hosts
  that went silent together are counted together whatever their heartbeat phase;
* otherwise **the BMC is asked** (where one is configured): power off → failed, recovery powers
  it on; power on (BMC answers, host does not) → failed, recovery fences it; BMC unreachable →
  failed all the same (every path is silent), and recovery retries the BMC. The host's
  heartbeats are checked once more after the BMC answers: one arriving meanwhile cancels it;
* a locked host silent on every path goes ``offline`` (no alarm, nothing to recover) and
  ``online`` again when heard.

Hosts never heard (``heartbeat_seen`` unset: no agent yet) are not judged by their silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from roost_host import alarms, logic
from roost_host.guard import HeartbeatGuard
from roost_host.liveness import Liveness, Path, Thresholds, mnfa_group
from roost_host.logic import State
from roost_host.models import Administrative, Availability
from roost_host.operations import HostOperations
from roost_host.settings import HostSettings
from roost_host.store import HostStore
from roost_shared.db import Database
from roost_shared.events import Envelope, utcnow
from roost_shared.heartbeat import Kind, mac_bytes
from roost_shared.metrics import Metrics
from roost_shared.outbox import Outbox

log = logging.getLogger(__name__)

#: What the monitor keeps of a host document (refreshed from the database and every write).
FIELDS = (
    "uuid",
    "hostname",
    "mgmt_mac",
    "mgmt_ip",  # the only source address its UDP heartbeats are believed from
    "administrative",
    "operational",
    "availability",
    "task",
    "heartbeat_seen",
    "degrade",
    "hb_alarms",
    "hb_paths",
    "mnfa",
    "recovery",
    "install_state",
    "bmc_type",  # whether it can be fenced; never the credentials
    "bmc_address",
)

#: The monitor's period while no host has ever been heard.
IDLE_TICK_S = 0.5

#: Availabilities of a host that is not running: a heartbeat from before it went so is stale.
DOWN = ("offline", "power-off", "failed")

#: Asks the BMC of a host document for its power state: "on", "off", or raises (unreachable,
#: wrong credentials, no BMC: returns None).
PowerProbe = Callable[[dict[str, Any]], Awaitable[str | None]]


def thresholds(settings: HostSettings) -> Thresholds:
    ms = 1000.0
    return Thresholds(
        period=settings.heartbeat_period_ms / ms,
        probe_after=settings.heartbeat_probe_after_ms / ms,
        fail_after=settings.heartbeat_fail_ms / ms,
        probe_timeout=settings.heartbeat_probe_timeout_ms / ms,
        probe_interval=settings.heartbeat_probe_timeout_ms / ms,
        udp_loss=settings.heartbeat_udp_loss_ms / ms,
        bus_loss=settings.heartbeat_bus_loss_ms / ms,
    )


@dataclass(slots=True)
class Tracked:
    doc: dict[str, Any]
    live: Liveness
    #: When the agent said it was stopping (a clean shutdown or reboot), monotonic.
    stopping_at: float | None = None
    #: (lost paths, held by MNFA) as last decided (so unchanged assessments cost no write).
    flags: tuple[tuple[str, ...], bool] = field(default_factory=lambda: ((), False))
    #: Not to be failed before this (monotonic): a host released from an MNFA hold gets a
    #: fresh window, so hosts coming back a few milliseconds apart are not fenced.
    grace_until: float = 0.0
    #: When the host was last seen to go down (offline, power-off, failed), monotonic: only a
    #: heartbeat after it says the host is back (one from just before a power-off does not).
    down_at: float = 0.0


class HeartbeatMonitor:
    def __init__(
        self,
        settings: HostSettings,
        db: Database,
        store: HostStore,
        ops: HostOperations,
        outbox: Outbox,
        metrics: Metrics,
        *,
        power_state: PowerProbe | None = None,
        on_failed: Callable[[], None] | None = None,
        guard: HeartbeatGuard | None = None,
    ) -> None:
        """``guard``: told of every host learned and deleted (its keys and addresses)."""
        self.settings = settings
        self.t = thresholds(settings)
        self.tick = min(self.t.period / 4, 0.025)
        self.db = db
        self.store = store
        self.ops = ops
        self.outbox = outbox
        self.power_state = power_state
        self.on_failed = on_failed
        self.guard = guard
        self.probe: Callable[[str, int], Awaitable[None]] | None = None
        self.hosts: dict[str, Tracked] = {}  # by management MAC
        self.by_raw: dict[bytes, Tracked] = {}  # the same, by the MAC's 6 bytes (receive path)
        self.recovering: dict[str, Tracked] = {}  # hosts with a recovery record, by MAC
        self._busy: set[str] = set()  # host uuids with a write in flight
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mnfa_raised = False
        self._watched = 0  # hosts heard at least once, as of the last evaluation
        self._unknown = metrics.counter(
            "heartbeats_unknown", "Heartbeats from MACs of no known host (ignored)."
        )
        self._decisions = metrics.counter(
            "heartbeat_decisions", "Transitions the heartbeat monitor made, by kind.", ["kind"]
        )
        self._udp_suspicions = metrics.counter(
            "heartbeat_udp_suspicions",
            "Times a host's UDP heartbeats were silent past the failure threshold: what a "
            "single-path detector would have failed (Roost asks the bus path first).",
        )
        self._detect = metrics.histogram(
            "heartbeat_detection_seconds",
            "From a failed host's last heartbeat to the failure decision.",
        )
        ops.observers.append(self.observe)
        ops.liveness = self.alive

    # Host documents ---------------------------------------------------------------------------

    def observe(self, doc: dict[str, Any]) -> None:
        """A host document was written: keep the view current."""
        mac = doc.get("mgmt_mac")
        if not mac:
            return
        lite = {k: doc.get(k) for k in FIELDS}
        if self.guard is not None:
            self.guard.learn(mac, lite.get("mgmt_ip"))
        tracked = self.hosts.get(mac)
        if tracked is None:
            now = time.monotonic()
            self.hosts[mac] = tracked = Tracked(lite, Liveness.new(mac, now))
            self.by_raw[mac_bytes(mac)] = tracked
            if lite.get("availability") in DOWN:
                # Known down (e.g. failed before this service restarted): the start-up grace
                # must not pass for a heartbeat, or recovery would think it came back.
                tracked.down_at = now
        else:
            if lite.get("availability") in DOWN and tracked.doc.get("availability") not in DOWN:
                tracked.down_at = time.monotonic()
            tracked.doc = lite
            tracked.flags = (tuple(_paths_of(lite)), bool(lite.get("mnfa")))
        if lite.get("recovery"):
            self.recovering[mac] = tracked
        else:
            self.recovering.pop(mac, None)

    async def refresh(self) -> None:
        """Load every host (at start and then every few seconds: renames, deletions, and writes
        another replica made)."""
        docs = await self.store.hosts.find({}, {k: 1 for k in FIELDS}).to_list()
        seen = set()
        for doc in docs:
            if doc.get("mgmt_mac"):
                seen.add(doc["mgmt_mac"])
                self.observe(doc)
        for mac in set(self.hosts) - seen:
            del self.hosts[mac]
            self.recovering.pop(mac, None)
            self.by_raw.pop(mac_bytes(mac), None)
        if self.guard is not None:
            self.guard.keep(seen)
        self._mnfa_raised = self._mnfa_raised or any(t.doc.get("mnfa") for t in self.hosts.values())

    def alive(self, doc: dict[str, Any]) -> bool | None:
        """True if the host is heard on some path, False if silent on every path, None if its
        agent was never heard (nothing to conclude)."""
        tracked = self.hosts.get(doc.get("mgmt_mac") or "")
        if tracked is None or not (doc.get("heartbeat_seen") or tracked.doc.get("heartbeat_seen")):
            return None
        live = tracked.live
        if max(live.last_udp, live.last_bus) <= tracked.down_at:
            return False  # nothing heard since it went down
        return live.alive_now(time.monotonic(), self.t)

    def returned_since(self, doc: dict[str, Any], since: float) -> bool:
        tracked = self.hosts.get(doc.get("mgmt_mac") or "")
        if tracked is None:
            return False
        return tracked.live.alive_now(time.monotonic(), self.t) and (
            max(tracked.live.last_udp, tracked.live.last_bus) > since
        )

    # Heartbeats --------------------------------------------------------------------------------

    def heard(self, kind: int, mac: bytes, seq: int, boot: bytes, path: Path, now: float) -> None:
        """One heartbeat's raw fields (called by the link for every datagram and bus message)."""
        tracked = self.by_raw.get(mac)
        if tracked is None:
            self._unknown.inc()
            return
        tracked.live.heard(now, path, boot, seq)
        if kind == Kind.stopping:
            tracked.stopping_at = now
        elif tracked.stopping_at is not None and now - tracked.stopping_at > self.t.fail_after:
            tracked.stopping_at = None  # it came back
        if not tracked.doc.get("heartbeat_seen") and tracked.doc["uuid"] not in self._busy:
            self._write(tracked, "first-heard", lambda s, u: self.ops.mark_heard(s, u))

    # The loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._refresh_logged()
        refreshed = time.monotonic()
        while True:
            # No host heartbeats yet (a fresh site, hosts without agents): look twice a second
            # instead of 40 times; the first heartbeat of a host makes it count.
            await asyncio.sleep(self.tick if self._watched else IDLE_TICK_S)
            now = time.monotonic()
            if now - refreshed > 5.0:
                await self._refresh_logged()
                refreshed = now
            try:
                self.evaluate(now)
            except Exception:
                log.exception("heartbeat evaluation failed; continuing")

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("could not load hosts for heartbeat monitoring: %s", exc)

    def evaluate(self, now: float) -> None:
        """One look at every host."""
        t = self.t
        silent: list[Tracked] = []
        held: list[Tracked] = []
        pending = False
        watched = 0
        for tracked in self.hosts.values():
            doc = tracked.doc
            if not doc.get("heartbeat_seen"):
                continue
            watched += 1
            live = tracked.live
            # Fast path: heard on UDP lately and on the bus lately, nothing flagged.
            if (
                now - live.last_udp < t.probe_after
                and now - live.last_bus < t.bus_loss
                and tracked.flags == ((), False)
                and doc.get("availability") != Availability.offline
            ):
                continue
            a = live.assess(now, t)
            if a.udp_suspected:
                self._udp_suspicions.inc()
            state = State.of(doc)
            in_service = logic.monitored(state)
            if a.probe_due and self.probe is not None:
                # A host already failed or offline is probed once a second, not per tick: its
                # UDP heartbeats tell when it is back.
                if in_service or live.probe_sent is None or now - live.probe_sent >= 1.0:
                    self._send_probe(tracked, now)
            if a.pending:
                pending = True
            if tracked.flags[1]:
                held.append(tracked)
            if a.silent:
                if in_service and not tracked.flags[1] and now >= tracked.grace_until:
                    silent.append(tracked)
                elif state.administrative is Administrative.locked:
                    self._locked_silent(tracked, state)
                continue
            if state.administrative is Administrative.locked:
                if (
                    state.availability is Availability.offline
                    and not state.task
                    and doc.get("install_state") in (None, "provisioned")
                    and now - live.last_udp < t.fail_after
                    and live.last_udp > tracked.down_at
                ):
                    self._write(tracked, "online", lambda s, u: self.ops.heard_again(s, u))
                continue
            lost = [p for p, lost in (("udp", a.udp_lost), ("bus", a.bus_lost)) if lost]
            if in_service and (tuple(lost), False) != tracked.flags:
                self._degrade(tracked, lost, held=False)
        self._watched = watched
        self._decide(silent, held, pending, now)

    def _decide(
        self, silent: list[Tracked], held: list[Tracked], pending: bool, now: float
    ) -> None:
        silent = [s for s in silent if s.doc["uuid"] not in self._busy]
        held_silent = [h for h in held if h.live.silent_since is not None]
        if self._mnfa_raised and not held:
            self._mnfa_end()
        if held and len(held_silent) + len(silent) < self.settings.mnfa_threshold:
            # Too few left silent for a site fault: whoever is still silent failed for real.
            self._mnfa_end()
            for h in held_silent:
                h.grace_until = now + max(1.0, 3 * self.t.fail_after)
                self._degrade(h, [], held=False)
            return
        if not silent:
            return
        if (
            pending
            and not held
            and not any(now - (s.live.silent_since or now) >= self.t.probe_timeout for s in silent)
        ):
            return  # another host's probe is still out: it may be silent together with these
        names = [s.doc["mgmt_mac"] for s in silent]
        held_names = [h.doc["mgmt_mac"] for h in held_silent]
        if mnfa_group(names, held_names, self.settings.mnfa_threshold):
            for s in silent:
                self._degrade(s, [], held=True)
            self._mnfa_raise([*(s.doc for s in silent), *(h.doc for h in held_silent)])
            return
        for s in silent:
            self._fail(s, now)

    # Decisions -> transitions ---------------------------------------------------------------

    def _send_probe(self, tracked: Tracked, now: float) -> None:
        number = tracked.live.probe(now)
        assert self.probe is not None
        self._spawn(self.probe(tracked.live.mac, number), f"probe {tracked.live.mac}")

    def _degrade(self, tracked: Tracked, lost: list[str], *, held: bool) -> None:
        tracked.flags = (tuple(lost), held)
        kind = "mnfa-hold" if held else ("degrade" if lost else "restore")
        self._write(tracked, kind, lambda s, u: self.ops.set_degrade(s, u, lost, held))

    def _locked_silent(self, tracked: Tracked, state: State) -> None:
        if state.availability is Availability.online and not state.task:
            cause = "heartbeat lost on every path (locked host)"
            self._write(
                tracked,
                "offline",
                lambda s, u: self.ops.heartbeat_lost(
                    s, u, reason=logic.HEARTBEAT_LOST, cause=cause, phase="wait"
                ),
            )

    def _fail(self, tracked: Tracked, now: float) -> None:
        uuid = tracked.doc["uuid"]
        self._busy.add(uuid)
        self._spawn(self._confirm_and_fail(tracked, now), f"fail {uuid}")

    async def _confirm_and_fail(self, tracked: Tracked, decided: float) -> None:
        uuid = tracked.doc["uuid"]
        live = tracked.live
        try:
            last = max(live.last_udp, live.last_bus)
            silence_ms = (decided - live.last_udp) * 1000
            cause = (
                f"heartbeat lost on every path (UDP silent {silence_ms:.0f} ms, bus probe "
                "unanswered)"
            )
            reason, phase, delay = logic.HEARTBEAT_LOST, "fence", 0.0
            if tracked.stopping_at is not None:
                # The agent said it was stopping: a reboot. Give it time before fencing.
                cause += "; its agent announced a clean stop, waiting for it to come back"
                phase, delay = "wait", self.settings.graceful_wait_s
            elif self.power_state is not None:
                try:
                    power = await self.power_state(tracked.doc)
                except Exception as exc:
                    reason = logic.HEARTBEAT_LOST_UNCONFIRMED
                    cause += f"; BMC could not confirm: {exc}"
                else:
                    if power == "off":
                        reason, phase = logic.HEARTBEAT_LOST_POWER_OFF, "power-on"
                        cause += "; BMC reports power off"
                    elif power == "on":
                        cause += "; BMC answers and reports power on"
                    else:
                        phase = "wait"  # no BMC: nothing to fence with
                        cause += "; no BMC to fence it with"
            else:
                phase = "wait"
            if max(live.last_udp, live.last_bus) > last:
                log.info(
                    "host %s heard again while confirming; not failed", tracked.doc["mgmt_mac"]
                )
                return
            result = await self.db.in_transaction(
                lambda s: self.ops.heartbeat_lost(
                    s, uuid, reason=reason, cause=cause, phase=phase, delay_s=delay
                )
            )
            if result is not None:
                self._detect.observe(time.monotonic() - last)
                self._decisions.labels("failed").inc()
                log.warning("host %s failed: %s", result.get("hostname") or uuid, cause)
                self.outbox.wake()
                if self.on_failed is not None:
                    self.on_failed()
        except Exception:
            log.exception("failing host %s did not complete; will decide again", uuid)
        finally:
            self._busy.discard(uuid)

    def _write(
        self,
        tracked: Tracked,
        kind: str,
        change: Callable[[Any, str], Awaitable[Any]],
    ) -> None:
        uuid = tracked.doc["uuid"]
        if uuid in self._busy:
            return
        self._busy.add(uuid)

        async def run() -> None:
            try:
                await self.db.in_transaction(lambda s: change(s, uuid))
                self._decisions.labels(kind).inc()
                self.outbox.wake()
            except Exception as exc:
                log.warning("heartbeat %s of %s failed: %s; will retry", kind, uuid, exc)
                tracked.flags = (("?",), False)  # force a fresh decision next tick
            finally:
                self._busy.discard(uuid)

        self._spawn(run(), f"{kind} {uuid}")

    def _mnfa_raise(self, docs: list[dict[str, Any]]) -> None:
        names = [d.get("hostname") or d["mgmt_mac"] for d in docs]
        log.warning("multi-node failure avoidance: %d hosts silent together: %s", len(names), names)
        self._decisions.labels("mnfa-enter").inc()
        self._mnfa_raised = True
        self._spawn(self._alarm(alarms.mnfa(names, utcnow())), "mnfa alarm")

    def _mnfa_end(self) -> None:
        if self._mnfa_raised:
            log.warning("multi-node failure avoidance ended")
            self._decisions.labels("mnfa-exit").inc()
            self._mnfa_raised = False
            self._spawn(
                self._alarm(alarms.clear(alarms.MNFA, alarms.MNFA_ENTITY, utcnow())), "mnfa clear"
            )

    async def _alarm(self, item: Any) -> None:
        envelope = Envelope.of(item, source="roost/host", subject=alarms.MNFA_ENTITY)
        await self.db.in_transaction(lambda s: self.outbox.add(s, [envelope]))
        self.outbox.wake()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reset(self) -> None:
        """Forget every host's liveness (a new leader term): what this replica heard before
        it lost the lease is stale, so each host gets the start-up grace again on refresh."""
        await self.aclose()
        self.hosts.clear()
        self.by_raw.clear()
        self.recovering.clear()
        self._busy.clear()
        self._watched = 0
        self._mnfa_raised = False


def _paths_of(doc: dict[str, Any]) -> list[str]:
    """The lost heartbeat paths a host document records."""
    return list(doc.get("hb_paths") or [])
