"""Event log retention: keep at most N records and none older than D days, oldest dropped first;
the API audit records (``500.900``) have limits of their own, apart from alarms and logs, so a
flood of refused requests can never prune the alarm history.
The same loop drops webhook notifications that every subscription has received.

StarlingX FM caps its event log at 4,000 records by deleting the oldest on insert; Roost prunes
in a background loop instead (so a burst of alarms never pays for the deletes) and also by age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from roost_fault.store import FaultStore
from roost_shared.events import utcnow
from roost_shared.metrics import Metrics

log = logging.getLogger(__name__)


class Retention:
    def __init__(
        self,
        store: FaultStore,
        metrics: Metrics,
        *,
        max_count: int,
        max_age_days: float,
        period_s: float,
        audit_max_count: int = 10_000,
        audit_max_age_days: float = 90,
    ) -> None:
        self.store = store
        self.max_count = max_count
        self.max_age = timedelta(days=max_age_days)
        self.audit_max_count = audit_max_count
        self.audit_max_age = timedelta(days=audit_max_age_days)
        self.period_s = period_s
        self._now = asyncio.Event()
        self._pruned = metrics.counter(
            "fault_event_log_pruned", "Event log records dropped by retention.", ["reason"]
        )
        self._size = metrics.gauge("fault_event_log_records", "Event log records kept.")

    def poke(self) -> None:
        """Prune soon (called after large writes)."""
        self._now.set()

    async def prune_once(self) -> tuple[int, int]:
        """Prune alarms and logs, then the API audit records, each against its own limits;
        (dropped for age, dropped for count) of the alarms and logs."""
        by_age, by_count = await self.store.prune_events(
            older_than=utcnow() - self.max_age, keep=self.max_count
        )
        audit_age, audit_count = await self.store.prune_events(
            older_than=utcnow() - self.audit_max_age, keep=self.audit_max_count, audit=True
        )
        for reason, n in (
            ("age", by_age),
            ("count", by_count),
            ("audit_age", audit_age),
            ("audit_count", audit_count),
        ):
            if n:
                self._pruned.labels(reason).inc(n)
        if by_age or by_count or audit_age or audit_count:
            log.info(
                "event log retention dropped %d by age, %d by count; audit records %d by age, "
                "%d by count",
                by_age,
                by_count,
                audit_age,
                audit_count,
            )
        self._size.set(await self.store.event_count())
        await self.store.prune_notifications()
        return by_age, by_count

    async def run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event log retention failed: %s", exc)
            self._now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self.period_s)
