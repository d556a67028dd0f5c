"""Events the fault service consumes and emits.

Consumes (queue ``fault.commands``): ``fault.alarm.set``, ``fault.alarm.clear``,
``fault.log.write`` from any service (an alarm is changed or cleared only by the service that
raised it). Emits through its outbox: ``fault.alarm.raised``,
``fault.alarm.changed``, ``fault.alarm.cleared`` (payload ``AlarmNotice``).
"""

from __future__ import annotations

from roost_fault.operations import FaultOperations
from roost_shared.bus import BatchHandler, Delivery
from roost_shared.db import Session
from roost_shared.publishers import Sender

QUEUE = "fault.commands"
BINDINGS = ("fault.alarm.set", "fault.alarm.clear", "fault.log.write")


def command_handler(ops: FaultOperations) -> BatchHandler:
    """Apply a batch of producer events in one transaction, in arrival order."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        assert session is not None
        await ops.apply(
            session,
            [(d.payload, d.envelope.time, Sender.service_of(d.sender)) for d in deliveries],
        )

    return handle
