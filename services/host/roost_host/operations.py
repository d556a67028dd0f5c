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

from roost_host import logic
from roost_host.kube import DrainResult, NodeResult
from roost_host.logic import HostFacts, Refused, State, Transition
from roost_host.models import Action, Administrative
from roost_host.settings import HostSettings
from roost_host.store import HostStore
from roost_shared.catalog import (
    AlarmClear,
    AlarmSet,
    AlarmType,
    HostRecord,
    HostStateChanged,
    Severity,
)
from roost_shared.db import Session
from roost_shared.events import Envelope, utcnow
from roost_shared.outbox import Outbox
from roost_shared.problems import Conflict

log = logging.getLogger(__name__)

SOURCE = "roost/host"
LOCKED_ALARM = "200.001"
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


class ActionRefused(Conflict):
    """409 naming ``action``, with the host's current state beside the reason."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.reason, field="action")
        self.state = refused.state


def entity(hostname: str) -> str:
    return f"host={hostname}"


def locked_alarm(hostname: str, now: datetime) -> AlarmSet:
    """200.001 as fm-doc events.yaml describes it (warning, out-of-service, mgmt-affecting)."""
    return AlarmSet(
        alarm_id=LOCKED_ALARM,
        entity_instance_id=entity(hostname),
        entity_type_id="host",
        severity=Severity.warning,
        reason_text=f"{hostname} was administratively locked to take it out-of-service.",
        alarm_type=AlarmType.operational,
        probable_cause="out-of-service",
        proposed_repair_action="Administratively unlock Host to bring it back in-service.",
        service_affecting=True,
        suppression=False,
        mgmt_affecting=True,
        timestamp=now,
    )


def unlocked_clear(hostname: str, now: datetime) -> AlarmClear:
    return AlarmClear(alarm_id=LOCKED_ALARM, entity_instance_id=entity(hostname), timestamp=now)


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

    def step_duration(self, step: str) -> timedelta:
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
                items.append(locked_alarm(hostname, now))
            else:
                items.append(unlocked_clear(hostname, now))
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
    ) -> dict[str, Any]:
        """Write a transition (state, task, pending step) and everything it causes;
        ``kube_op`` also requests a drain or uncordon of the host's node."""
        now = utcnow()
        before = State.of(doc)
        pending = None
        if t.step is not None:
            pending = {
                "id": str(uuid.uuid4()),
                "step": t.step,
                "due": now + self.step_duration(t.step),
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
            },
        )
        await self._record(session, updated, before, t, actor, now)
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
        facts = HostFacts(doc.get("hostname"), doc.get("personality"), State.of(doc))
        try:
            t = logic.decide(action, facts, other_controllers=others, reason=reason)
        except Refused as exc:
            raise ActionRefused(exc) from None
        log.info("host %s: %s by %s -> %s", facts.hostname, action.value, actor, t.to)
        # A lock drains the node afterwards, in the background; the lock itself never waits
        # for (or is undone by) the drain, as StarlingX locks whatever Kubernetes says.
        kube_op = DRAIN if action in (Action.lock, Action.force_lock) else None
        return await self._apply(session, doc, t, actor, kube_op=kube_op)

    # Timed steps ----------------------------------------------------------------------------

    async def finish_step(self, session: Session, host_uuid: str, step_id: str) -> bool:
        """Complete the host's step ``step_id`` if it is still the one pending."""
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return False  # locked meanwhile, deleted, or already done
        t = logic.complete_step(pending["step"], State.of(doc))
        # The node takes pods again once the host is enabled (the in-test passed), not when the
        # unlock starts: a host that fails or is locked during its in-test stays cordoned.
        kube_op = UNCORDON if pending["step"] == "intest" else None
        await self._apply(session, doc, t, "system", kube_op=kube_op)
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
                        session, [unlocked_clear(doc["hostname"], now)], entity(doc["hostname"])
                    )
            return
        identity = {
            "hostname": record.hostname,
            "personality": record.personality.value if record.personality else None,
            "mgmt_mac": record.mgmt_mac,
            "mgmt_ip": record.mgmt_ip,
            "bmc_type": record.bmc_type,
            "bmc_address": record.bmc_address,
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
            t = Transition(state, f"{verb} by config", logic.LEARNED)
            await self._record(session, doc, state, t, "config", now, learned=True)
            return
        old_name = doc.get("hostname")
        updated = await self.store.update(session, record.uuid, {**identity, "updated_at": now})
        state = State.of(updated)
        if old_name != record.hostname and state.administrative is Administrative.locked:
            # The lock alarm follows the host to its new name (config clears the old entity's).
            items: list[BaseModel] = []
            if old_name:
                items.append(unlocked_clear(old_name, now))
            if record.hostname:
                items.append(locked_alarm(record.hostname, now))
            await self._emit(session, items, entity(record.hostname or record.uuid))
        if record.install_state == "provisioned":
            t = logic.provisioned(state)
            if t is not None:
                await self._apply(session, updated, t, "config")
