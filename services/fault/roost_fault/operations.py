"""Fault use cases: apply sets, clears and logs (from the bus or the API) in one transaction,
together with the events and webhook notifications they cause."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from roost_fault import logic
from roost_fault.models import SuppressionStatus
from roost_fault.store import FaultStore
from roost_shared.catalog import AlarmClear, AlarmSet
from roost_shared.db import Session
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_shared.outbox import Outbox

log = logging.getLogger(__name__)

SOURCE = "roost/fault"


class FaultOperations:
    """The one place that changes alarms, so the bus and the API behave the same."""

    def __init__(self, store: FaultStore, outbox: Outbox, metrics: Metrics) -> None:
        self.store = store
        self.outbox = outbox
        self._refused = metrics.counter(
            "fault_changes_refused",
            "Alarm sets and clears refused: the alarm was raised by another service.",
            ["sender"],
        )

    async def apply(self, session: Session, commands: Sequence[logic.Command]) -> logic.Outcome:
        """Apply commands in order; everything they cause commits with ``session``."""
        keys = [
            (c.alarm_id, c.entity_instance_id)
            for c, _, _ in commands
            if isinstance(c, AlarmSet) or (isinstance(c, AlarmClear) and c.alarm_id)
        ]
        entities = [
            c.entity_instance_id
            for c, _, _ in commands
            if isinstance(c, AlarmClear) and not c.alarm_id
        ]
        current = await self.store.alarms_for(session, keys, entities)
        table = await self.store.suppression_table(session)
        suppressed = {a for a, s in table.items() if s == SuppressionStatus.suppressed}
        outcome = logic.apply(commands, current, suppressed, set(table))
        for (alarm_id, entity), by in outcome.refused:
            log.warning(
                "refused %s's change of alarm %s on %s: another service raised it",
                by,
                alarm_id,
                entity,
            )
            self._refused.labels(by).inc()
        await self.store.add_alarm_ids(session, outcome.new_alarm_ids)
        await self.store.write_alarms(session, outcome.alarms, current)
        await self.store.append_events(session, outcome.event_log)
        if outcome.notices:
            await self._notify(session, outcome.notices)
        return outcome

    async def _notify(self, session: Session, notices: list[logic.Notice]) -> None:
        envelopes = [
            Envelope.of(
                n.to_model(),
                type=n.event_type,
                source=SOURCE,
                subject=n.alarm["entity_instance_id"],
            )
            for n in notices
        ]
        await self.outbox.add(session, envelopes)
        # Webhooks read one notification log, each subscription with its own cursor; nothing is
        # logged while nobody subscribes.
        if await self.store.subscriptions.count_documents({}, limit=1, session=session) == 0:
            return
        first = await self.store.next_seqs(session, len(envelopes))
        await self.store.log_notifications(
            session,
            [
                {
                    "seq": first + i,
                    "id": env.id,
                    "type": env.type,
                    "time": env.time,
                    "alarm": env.data,
                }
                for i, env in enumerate(envelopes)
            ],
        )
