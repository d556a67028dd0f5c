"""Events the config service consumes and emits.

Consumes (queue ``config.agents``): ``agent.host.announced``, ``agent.inventory.reported``,
``agent.config.applied``, ``agent.command.refused`` (250.011 on repeated forgeries). Emits
through its outbox: ``config.host.added|updated|deleted`` (``HostRecord``) on ``roost.events``;
``config.apply`` commands on ``roost.commands`` (key ``agent.<mac hex>``, signed when the relay
publishes them); ``fault.alarm.set|clear`` and ``fault.log.write`` for the fault service.
"""

from __future__ import annotations

from roost_config.operations import ConfigOperations
from roost_shared.bus import BatchHandler, Delivery
from roost_shared.catalog import CommandRefused, ConfigApplied, HostAnnounced, InventoryReported
from roost_shared.db import Session

QUEUE = "config.agents"
BINDINGS = (
    "agent.host.announced",
    "agent.inventory.reported",
    "agent.config.applied",
    "agent.command.refused",
)


def agent_handler(ops: ConfigOperations) -> BatchHandler:
    """Apply a batch of agent reports in one transaction, in arrival order."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        assert session is not None
        applied: list[ConfigApplied] = []  # a run of consecutive reports, handled together
        for d in deliveries:
            payload = d.payload
            if isinstance(payload, ConfigApplied):
                applied.append(payload)
                continue
            if applied:
                await ops.config_applied(session, applied)
                applied = []
            if isinstance(payload, HostAnnounced):
                await ops.announced(session, payload)
            elif isinstance(payload, InventoryReported):
                await ops.inventory_reported(session, payload)
            elif isinstance(payload, CommandRefused):
                await ops.command_refused(session, payload)
        if applied:
            await ops.config_applied(session, applied)

    return handle
