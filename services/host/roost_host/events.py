"""Events the host service consumes and emits.

Consumes (queue ``host.inventory``): ``config.host.added|updated|deleted`` (``HostRecord``) —
the hosts it manages. Emits through its outbox: ``host.state.changed`` (``HostStateChanged``)
for every transition, and ``fault.alarm.set|clear`` for 200.001 (host administratively locked).
"""

from __future__ import annotations

from roost_host.operations import HostOperations
from roost_shared.bus import BatchHandler, Delivery
from roost_shared.catalog import HostRecord
from roost_shared.db import Session

QUEUE = "host.inventory"
BINDINGS = ("config.host.added", "config.host.updated", "config.host.deleted")


def inventory_handler(ops: HostOperations) -> BatchHandler:
    """Apply a batch of config's host events in one transaction, in arrival order."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        assert session is not None
        for d in deliveries:
            if isinstance(d.payload, HostRecord):
                verb = d.envelope.type.rsplit(".", 1)[-1]
                await ops.learn(session, verb, d.payload)

    return handle
