"""Events the service service consumes.

* Queue ``service.hosts``: ``config.host.added|updated|deleted`` (hostname, MAC, labels) and
  ``host.state.changed`` (states) into the ``hosts`` collection (:mod:`roost_service.hosts`).
* Queue ``service.instances``: ``agent.instance.changed``, each instance's latest report, into
  the ``reports`` collection (:mod:`roost_service.placements`).

Handlers only record facts in the consumer's transaction; the controller
(:mod:`roost_service.controller`) is woken after the commit and decides.
"""

from __future__ import annotations

from roost_service.hosts import HostBook
from roost_service.placements import PlacementStore
from roost_shared.bus import BatchHandler, Delivery
from roost_shared.catalog import HostRecord, HostStateChanged, InstanceChanged
from roost_shared.db import Session

HOSTS_QUEUE = "service.hosts"
HOSTS_BINDINGS = (
    "config.host.added",
    "config.host.updated",
    "config.host.deleted",
    "host.state.changed",
)
REPORTS_QUEUE = "service.instances"
REPORTS_BINDINGS = ("agent.instance.changed",)


def hosts_handler(book: HostBook) -> BatchHandler:
    """Apply config's host records and the host service's transitions, in arrival order."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        assert session is not None
        for d in deliveries:
            if isinstance(d.payload, HostRecord):
                await book.learn(session, d.envelope.type.rsplit(".", 1)[-1], d.payload)
            elif isinstance(d.payload, HostStateChanged):
                await book.state(session, d.payload)

    return handle


def reports_handler(store: PlacementStore) -> BatchHandler:
    """Record each agent report as its instance's latest."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        assert session is not None
        for d in deliveries:
            if isinstance(d.payload, InstanceChanged):
                await store.record_report(session, d.payload)

    return handle
