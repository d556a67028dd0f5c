"""Host use cases. Each runs inside the caller's transaction and writes, with the same session,
the host's new state, its timeline entry, ``host.state.changed`` and the 200.001 alarm set or
clear (through the outbox): a crash loses or doubles none of them.

The API, the config-event consumer and the step runner all come through here.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from roost_host import logic
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

    def __init__(self, store: HostStore, outbox: Outbox, settings: HostSettings) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings

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

    async def _apply(
        self, session: Session, doc: dict[str, Any], t: Transition, actor: str
    ) -> dict[str, Any]:
        """Write a transition (state, task, pending step) and everything it causes."""
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
        return await self._apply(session, doc, t, actor)

    # Timed steps ----------------------------------------------------------------------------

    async def finish_step(self, session: Session, host_uuid: str, step_id: str) -> bool:
        """Complete the host's step ``step_id`` if it is still the one pending."""
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return False  # locked meanwhile, deleted, or already done
        t = logic.complete_step(pending["step"], State.of(doc))
        await self._apply(session, doc, t, "system")
        return True

    async def restart_step(self, session: Session, host_uuid: str, step_id: str) -> None:
        doc = await self.store.by_uuid(host_uuid, session)
        pending = (doc or {}).get("pending") or {}
        if doc is None or pending.get("id") != step_id:
            return
        t = logic.restart_step(pending["step"], State.of(doc))
        await self._apply(session, doc, t, "system")

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
