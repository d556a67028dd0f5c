"""Host use cases. Each runs inside the caller's transaction and writes, with the same session,
the host's new state, its timeline entry, ``host.state.changed`` and the 200.001 alarm set or
clear (through the outbox): a crash loses or doubles none of them.

The API, the config-event consumer and the step runner all come through here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from roost_host import alarms, logic
from roost_host.kube import DrainResult, NodeResult
from roost_host.logic import HostFacts, Refused, State, Transition
from roost_host.models import Action, Administrative, Availability
from roost_host.settings import HostSettings
from roost_host.store import HostStore
from roost_shared.catalog import (
    HostRecord,
    HostStateChanged,
)
from roost_shared.db import Session
from roost_shared.events import Envelope, utcnow
from roost_shared.outbox import Outbox
from roost_shared.problems import Conflict

log = logging.getLogger(__name__)

SOURCE = "roost/host"
#: Identity fields copied from config's ``HostRecord`` (never a BMC password: it has none).
IDENTITY = ("hostname", "personality", "mgmt_mac", "mgmt_ip", "bmc_type", "bmc_address")


DRAIN = "drain"
UNCORDON = "uncordon"
KUBE_PENDING = "pending"


def kube_reason(op: str, result: DrainResult | NodeResult) -> str:
    """The timeline reason code of a drain's or uncordon's outcome, e.g. ``drain-done``,
    ``drain-blocked`` (a PodDisruptionBudget kept a pod on the node until the deadline),
    ``drain-timed-out``, ``drain-unreachable``, ``uncordon-done``."""
    if isinstance(result, DrainResult) and result.status == "timed_out":
        blocked = {str(p) for p in result.blocked_by_pdb}
        if any(str(p) in blocked for p in result.left):
            return f"{op}-blocked"
    suffix = {
        "done": "done",
        "drained": "done",
        "disabled": "disabled",
        "not_found": "node-not-found",
        "unreachable": "unreachable",
        "timed_out": "timed-out",
        "error": "failed",
    }[result.status]
    return f"{op}-{suffix}"


def has_bmc(doc: dict[str, Any]) -> bool:
    """An IPMI BMC with credentials is configured (whether it answers is another matter)."""
    return (
        doc.get("bmc_type") == "ipmi"
        and bool(doc.get("bmc_address"))
        and bool(doc.get("bmc_password_enc"))
    )


class ActionRefused(Conflict):
    """409 naming ``action``, with the host's current state beside the reason."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.reason, field="action")
        self.state = refused.state


def entity(hostname: str) -> str:
    return alarms.host_entity(hostname)


class HostOperations:
    """The one place that changes hosts."""

    def __init__(
        self,
        store: HostStore,
        outbox: Outbox,
        settings: HostSettings,
        kube_node: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        #: The Kubernetes node of a hostname; None when no cluster is configured (then no
        #: drain or uncordon is ever requested, and the timeline stays free of them).
        self.kube_node = kube_node
        #: Told of every host written by a transition (the heartbeat monitor keeps its view of
        #: states current with it; a rolled-back write is corrected by its periodic refresh).
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        #: Whether a host is heard on some heartbeat path: True, False (silent on every path)
        #: or None (never heard: a host without an agent). Set by the heartbeat monitor.
        self.liveness: Callable[[dict[str, Any]], bool | None] = lambda _doc: None

    def step_duration(self, step: str, bmc: bool = False) -> timedelta:
        if bmc:
            return timedelta(0)  # the step runner calls the BMC at once
        seconds = self.settings.intest_s if step == "intest" else self.settings.step_s
        return timedelta(seconds=seconds)

    async def _emit(self, session: Session, items: list[BaseModel], subject: str | None) -> None:
        await self.outbox.add(
            session, [Envelope.of(i, source=SOURCE, subject=subject) for i in items]
        )

    async def _record(
        self,
        session: Session,
        doc: dict[str, Any],
        before: State,
        t: Transition,
        actor: str,
        now: datetime,
        *,
        learned: bool = False,
    ) -> None:
        """Timeline entry, ``host.state.changed`` and the lock alarm for one transition (a newly
        learned locked host gets its 200.001 too, as in StarlingX)."""
        hostname = doc.get("hostname")
        await self.store.add_entry(
            session,
            {
                "uuid": str(uuid.uuid4()),
                "host_uuid": doc["uuid"],
                "hostname": hostname,
                "time": now,
                "from": before.fields(),
                "to": t.to.fields(),
                "task": t.to.task,
                "cause": t.cause,
                "reason": t.reason,
                "actor": actor,
            },
        )
        items: list[BaseModel] = [
            HostStateChanged(
                uuid=doc["uuid"],
                hostname=hostname,
                personality=doc.get("personality"),
                **{f"from_{k}": v for k, v in before.fields().items()},
                **{f"to_{k}": v for k, v in t.to.fields().items()},
                task=t.to.task,
                cause=t.cause,
                reason=t.reason,
                actor=actor,
                time=now,
            )
        ]
        if hostname and (learned or before.administrative is not t.to.administrative):
            if t.to.administrative is Administrative.locked:
                items.append(alarms.locked(hostname, now))
            else:
                items.append(alarms.unlocked(hostname, now))
        await self._emit(session, items, entity(hostname) if hostname else doc["uuid"])

    def _kube_request(self, doc: dict[str, Any], op: str, now: datetime) -> dict[str, Any]:
        """``{"kube": ...}`` asking the Kubernetes runner to ``op`` (drain or uncordon) the
        host's node after this transaction commits, or nothing without a cluster."""
        if self.kube_node is None or not doc.get("hostname"):
            return {}
        return {
            "kube": {
                "id": str(uuid.uuid4()),
                "op": op,
                "node": self.kube_node(doc["hostname"]),
                "status": KUBE_PENDING,
                "reason": "",
                "message": f"{op} requested",
                "requested_at": now,
                "finished_at": None,
            }
        }

    async def _apply(
        self,
        session: Session,
        doc: dict[str, Any],
        t: Transition,
        actor: str,
        *,
        kube_op: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write a transition (state, task, pending step) and everything it causes;
        ``kube_op`` also requests a drain or uncordon of the host's node; ``extra`` are more
        fields of the host written in the same update."""
        now = utcnow()
        before = State.of(doc)
        pending = None
        if t.step is not None:
            bmc = t.step in logic.BMC_STEPS and has_bmc(doc)
            pending = {
                "id": str(uuid.uuid4()),
                "step": t.step,
                "due": now + self.step_duration(t.step, bmc),
                "bmc": bmc,
                # Where a failed power step returns the host (kept when a restart re-runs it).
                "previous": (
                    (doc.get("pending") or {}).get("previous")
                    if (doc.get("pending") or {}).get("step") == t.step
                    else None
                )
                or before.availability.value,
            }
        if doc.get("personality") == "controller":
            await self.store.touch_controller_guard(session)
        updated = await self.store.update(
            session,
            doc["uuid"],
            {
                **t.to.fields(),
                "task": t.to.task,
                "pending": pending,
                "state_changed_at": now,
                "updated_at": now,
                **(self._kube_request(doc, kube_op, now) if kube_op else {}),
                **(extra or {}),
            },
        )
        await self._record(session, updated, before, t, actor, now)
        self._observed(updated)
        return updated

    # Operator actions -----------------------------------------------------------------------

    async def act(
        self, session: Session, ref: str, action: Action, reason: str, actor: str
    ) -> dict[str, Any]:
        doc = await self.store.host(ref, session)
        others: list[State] = []
        if doc.get("personality") == "controller":
            # Read under the controller guard: a concurrent lock of another controller
            # conflicts with this transaction instead of both passing the last-controller rule.
            await self.store.touch_controller_guard(session)
            others = [State.of(o) for o in await self.store.other_controllers(session, doc["uuid"])]
        facts = HostFacts(
            doc.get("hostname"), doc.get("personality"), State.of(doc), bmc=has_bmc(doc)
        )
        try:
            t = logic.decide(action, facts, other_controllers=others, reason=reason)
        except Refused as exc:
            raise ActionRefused(exc) from None
        log.info("host %s: %s by %s -> %s", facts.hostname, action.value, actor, t.to)
        # A lock drains the node afterwards, in the background; the lock itself never waits
        # for (or is undone by) the drain, as StarlingX locks whatever Kubernetes says.
        locking = action in (Action.lock, Action.force_lock)
        kube_op = DRAIN if locking else None
        extra: dict[str, Any] = {}
        if locking:
            # A lock takes the host out of service: auto-recovery stops, and the failure and
            # heartbeat-path alarms give way to 200.001 (StarlingX clears them on lock too).
            extra = {"recovery": None, "degrade": [], "hb_paths": [], "mnfa": False}
            await self._clear_heartbeat_alarms(session, doc)
            extra["hb_alarms"] = []
        return await self._apply(session, doc, t, actor, kube_op=kube_op, extra=extra)

    # Timed steps ----------------------------------------------------------------------------

    async def finish_step(self, session: Session, host_uuid: str, step_id: str) -> bool:
        """Complete the host's step ``step_id`` if it is still the one pending."""
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return False  # locked meanwhile, deleted, or already done
        if pending["step"] == "intest" and self.liveness(doc) is False:
            # A host whose agent has heartbeated before but is silent now fails its in-test.
            await self.fail(
                session,
                doc,
                logic.intest_failed(State.of(doc), "the host is silent on every heartbeat path"),
                phase="fence" if has_bmc(doc) else "wait",
            )
            return True
        t = logic.complete_step(pending["step"], State.of(doc))
        # The node takes pods again once the host is enabled (the in-test passed), not when the
        # unlock starts: a host that fails or is locked during its in-test stays cordoned.
        kube_op = UNCORDON if pending["step"] == "intest" else None
        extra: dict[str, Any] = {}
        if pending["step"] == "intest" and doc.get("recovery"):
            extra["recovery"] = None  # recovered: the failure is over
            if doc.get("hostname"):
                await self._emit_alarms(
                    session, doc, [alarms.clear_host(alarms.FAILED, doc["hostname"], utcnow())]
                )
        await self._apply(session, doc, t, "system", kube_op=kube_op, extra=extra)
        return True

    async def finish_power_step(
        self, session: Session, host_uuid: str, step_id: str, error: str | None
    ) -> bool:
        """Record what the BMC did for the host's power step ``step_id`` (``error``: why it
        could not); False if the step is no longer the one pending."""
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return False
        state = State.of(doc)
        if error is None:
            t = logic.power_step_done(
                pending["step"], state, waits_for_agent=bool(doc.get("heartbeat_seen"))
            )
        else:
            previous = Availability(pending.get("previous") or state.availability.value)
            t = logic.power_step_failed(pending["step"], state, previous, error)
        await self._apply(session, doc, t, "system")
        return True

    async def restart_step(self, session: Session, host_uuid: str, step_id: str) -> None:
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return
        t = logic.restart_step(pending["step"], State.of(doc))
        await self._apply(session, doc, t, "system")

    # Kubernetes ----------------------------------------------------------------------------

    async def kube_done(
        self, session: Session, host_uuid: str, request_id: str, result: DrainResult | NodeResult
    ) -> bool:
        """Record the outcome of the Kubernetes request ``request_id`` on the host and its
        timeline (states unchanged; no ``host.state.changed``: nothing transitioned). False when
        the request was superseded by a newer one or the host is gone."""
        doc = await self.store.by_uuid(host_uuid, session)
        kube = (doc or {}).get("kube") or {}
        if doc is None or kube.get("id") != request_id or kube.get("status") != KUBE_PENDING:
            return False
        now = utcnow()
        reason = kube_reason(kube["op"], result)
        await self.store.update(
            session,
            host_uuid,
            {
                "kube": {
                    **kube,
                    "status": result.status,
                    "reason": reason,
                    "message": result.message,
                    "finished_at": now,
                },
                "updated_at": now,
            },
        )
        state = State.of(doc)
        await self.store.add_entry(
            session,
            {
                "uuid": str(uuid.uuid4()),
                "host_uuid": host_uuid,
                "hostname": doc.get("hostname"),
                "time": now,
                "from": state.fields(),
                "to": state.fields(),
                "task": state.task,
                "cause": f"kubernetes {kube['op']}",
                "reason": reason,
                "detail": result.message,
                "actor": "system",
            },
        )
        return True

    # Learning hosts from config -------------------------------------------------------------

    async def learn(self, session: Session, verb: str, record: HostRecord) -> None:
        """Apply ``config.host.<verb>``: create, update identity, or remove a host."""
        doc = await self.store.by_uuid(record.uuid, session)
        now = utcnow()
        if verb == "deleted":
            if doc is not None:
                await self.store.delete(session, record.uuid)
                if doc.get("hostname"):
                    await self._emit(
                        session, [alarms.unlocked(doc["hostname"], now)], entity(doc["hostname"])
                    )
            return
        identity = {
            "hostname": record.hostname,
            "personality": record.personality.value if record.personality else None,
            "mgmt_mac": record.mgmt_mac,
            "mgmt_ip": record.mgmt_ip,
            "bmc_type": record.bmc_type,
            "bmc_address": record.bmc_address,
            # BMC access for bmc.py: the password stays ciphertext here (never shown by the API).
            "bmc_port": record.bmc_port,
            "bmc_username": record.bmc_username,
            "bmc_password_enc": record.bmc_password_enc,
            "install_state": record.install_state,
        }
        if doc is None:
            state = logic.initial_state(record.install_state)
            doc = {
                "uuid": record.uuid,
                **identity,
                **state.fields(),
                "task": "",
                "pending": None,
                "version": 0,
                "created_at": now,
                "updated_at": now,
                "state_changed_at": now,
            }
            await self.store.insert(session, doc)
            self._observed(doc)
            t = Transition(state, f"{verb} by config", logic.LEARNED)
            await self._record(session, doc, state, t, "config", now, learned=True)
            return
        old_name = doc.get("hostname")
        updated = await self.store.update(session, record.uuid, {**identity, "updated_at": now})
        self._observed(updated)
        state = State.of(updated)
        if old_name != record.hostname and state.administrative is Administrative.locked:
            # The lock alarm follows the host to its new name (config clears the old entity's).
            items: list[BaseModel] = []
            if old_name:
                items.append(alarms.unlocked(old_name, now))
            if record.hostname:
                items.append(alarms.locked(record.hostname, now))
            await self._emit(session, items, entity(record.hostname or record.uuid))
        if record.install_state == "provisioned":
            t = logic.provisioned(state)
            if t is not None:
                await self._apply(session, updated, t, "config")

    # Heartbeats, failures and auto-recovery (the monitor and the recovery runner) ------------

    async def _emit_alarms(self, session: Session, doc: dict[str, Any], items: list) -> None:
        if items:
            subject = entity(doc["hostname"]) if doc.get("hostname") else doc["uuid"]
            await self._emit(session, items, subject)

    async def _clear_heartbeat_alarms(self, session: Session, doc: dict[str, Any]) -> None:
        """Clear the failure and path alarms the host has raised (kept in ``hb_alarms``)."""
        if doc.get("hostname"):
            now = utcnow()
            items = [alarms.clear_host(a, doc["hostname"], now) for a in doc.get("hb_alarms", [])]
            if doc.get("recovery"):
                items.append(alarms.clear_host(alarms.FAILED, doc["hostname"], now))
            await self._emit_alarms(session, doc, items)

    async def mark_heard(self, session: Session, host_uuid: str) -> None:
        """The host's agent heartbeats: from now on its silence means something (a host never
        heard, e.g. one without an agent, is not failed for being silent)."""
        await self.hosts_update_plain(session, host_uuid, {"heartbeat_seen": True})

    async def hosts_update_plain(
        self, session: Session, host_uuid: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        updated = await self.store.update(session, host_uuid, changes)
        self._observed(updated)
        return updated

    def _observed(self, doc: dict[str, Any]) -> None:
        """Tell the observers (the heartbeat monitor) about a host written outside ``_apply``:
        a host config just told us about is heard from its first heartbeat on."""
        for observe in self.observers:
            observe(doc)

    async def set_degrade(
        self, session: Session, host_uuid: str, lost_paths: list[str], held: bool
    ) -> None:
        """Bring the host's path alarms (200.005/200.009) and ``degraded`` in line with the
        heartbeat paths lost and whether multi-node failure avoidance holds it."""
        doc = await self.store.by_uuid(host_uuid, session)
        if doc is None:
            return
        state = State.of(doc)
        now = utcnow()
        hostname = doc.get("hostname")
        raised = set(doc.get("hb_alarms", []))
        wanted = (
            {alarms.PATH_ALARMS[p] for p in lost_paths}
            if hostname and logic.monitored(state)
            else set()
        )
        items: list[BaseModel] = []
        for path in lost_paths:
            if alarms.PATH_ALARMS[path] in wanted - raised:
                items.append(alarms.path_lost(hostname or "", path, now))
        items += [alarms.clear_host(a, hostname, now) for a in raised - wanted if hostname]
        await self._emit_alarms(session, doc, items)
        causes = [alarms.PATH_WORDS[p] for p in lost_paths]
        if held:
            causes.append("held by multi-node failure avoidance (silent on every path)")
        extra = {
            "hb_alarms": sorted(wanted),
            "hb_paths": lost_paths,
            "degrade": causes,
            "mnfa": held,
        }
        t = logic.degraded(state, causes)
        if t is None:
            await self.hosts_update_plain(session, host_uuid, extra)
        else:
            if held and t.reason == logic.PATH_LOST:
                t = Transition(t.to, t.cause, logic.MNFA_HOLD)
            await self._apply(session, doc, t, "system", extra=extra)

    def _recovery(self, attempt: int, phase: str, due: datetime, why: str) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "attempt": attempt, "phase": phase, "due": due, "why": why}

    async def fail(
        self,
        session: Session,
        doc: dict[str, Any],
        t: Transition,
        *,
        phase: str = "fence",
        delay_s: float = 0.0,
    ) -> dict[str, Any]:
        """Fail an unlocked host: unlocked-disabled-failed, 200.004, its node drained, and
        auto-recovery scheduled at ``phase`` (``fence``; ``power-on`` when it is already off;
        ``wait`` for its return without touching its power)."""
        now = utcnow()
        prior = doc.get("recovery") or {}
        attempt = int(prior.get("attempt", 0)) + 1 if prior else 1
        await self._clear_heartbeat_alarms(session, {**doc, "recovery": None})
        if doc.get("hostname"):
            await self._emit_alarms(
                session, doc, [alarms.host_failed(doc["hostname"], now, t.cause)]
            )
        return await self._apply(
            session,
            doc,
            t,
            "system",
            kube_op=DRAIN,
            extra={
                "recovery": self._recovery(
                    attempt, phase, now + timedelta(seconds=delay_s), t.cause
                ),
                "hb_alarms": [],
                "hb_paths": [],
                "degrade": [],
                "mnfa": False,
            },
        )

    async def heartbeat_lost(
        self,
        session: Session,
        host_uuid: str,
        *,
        reason: str,
        cause: str,
        phase: str,
        delay_s: float = 0.0,
    ) -> dict[str, Any] | None:
        """Every path is silent: fail the host (or take a locked one offline). None when the
        host's state no longer allows it (locked, in a step, already failed)."""
        doc = await self.store.by_uuid(host_uuid, session)
        if doc is None:
            return None
        t = logic.failed(State.of(doc), reason, cause)
        if t is None:
            return None
        if t.to.administrative is Administrative.locked:
            return await self._apply(session, doc, t, "system")
        return await self.fail(session, doc, t, phase=phase, delay_s=delay_s)

    async def heard_again(self, session: Session, host_uuid: str) -> None:
        """A locked host that went offline on heartbeat loss heartbeats again."""
        doc = await self.store.by_uuid(host_uuid, session)
        if doc is None or doc.get("install_state") not in (None, "provisioned"):
            return
        t = logic.back_online(State.of(doc))
        if t is not None:
            await self._apply(session, doc, t, "system")

    async def recovery_move(
        self,
        session: Session,
        host_uuid: str,
        recovery_id: str,
        *,
        phase: str,
        due: datetime | None,
        cause: str,
        reason: str,
        attempt: int | None = None,
    ) -> dict[str, Any] | None:
        """Move the host's recovery ``recovery_id`` to ``phase`` (a timeline entry with the task
        naming it); None if that recovery is no longer current (locked, recovered, restarted)."""
        doc = await self.store.by_uuid(host_uuid, session)
        rec = (doc or {}).get("recovery") or {}
        if doc is None or rec.get("id") != recovery_id:
            return None
        t = logic.recovery_task(State.of(doc), phase, cause, reason)
        rec = {**rec, "phase": phase, "due": due}
        if attempt is not None:
            rec["attempt"] = attempt
        return await self._apply(session, doc, t, "system", extra={"recovery": rec})

    async def recovery_returned(
        self, session: Session, host_uuid: str, recovery_id: str, cause: str, reason: str
    ) -> bool:
        """The failed host heartbeats again: start its in-test (the recovery ends when it
        passes; a failed in-test fails the host again with the next attempt)."""
        doc = await self.store.by_uuid(host_uuid, session)
        rec = (doc or {}).get("recovery") or {}
        if doc is None or rec.get("id") != recovery_id:
            return False
        t = logic.recovered_to_intest(cause, reason)
        await self._apply(
            session, doc, t, "system", extra={"recovery": {**rec, "phase": "intest", "due": None}}
        )
        return True

    async def recovery_gave_up(
        self, session: Session, host_uuid: str, recovery_id: str, why: str
    ) -> bool:
        doc = await self.store.by_uuid(host_uuid, session)
        rec = (doc or {}).get("recovery") or {}
        if doc is None or rec.get("id") != recovery_id:
            return False
        now = utcnow()
        if doc.get("hostname"):
            await self._emit_alarms(
                session, doc, [alarms.host_failed(doc["hostname"], now, why, gave_up=True)]
            )
        t = logic.gave_up(State.of(doc), why)
        await self._apply(
            session,
            doc,
            t,
            "system",
            extra={"recovery": {**rec, "phase": "gave-up", "due": None, "why": why}},
        )
        return True
