"""The timed-step runner: finishes in-tests, reboots, resets, reinstalls and power-ons when due.

A step is stored in the host document (``pending: {id, step, due}``) in the same transaction as
the transition that started it, so it survives a restart. A restarted service does not trust a
step's earlier progress: at start-up every pending step starts again from the beginning (a
timeline entry says so), then the loop completes steps as they fall due. Steps are finished one
host per transaction, checked against the step's id, so a lock during an in-test (which clears
``pending``) always wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from roost_host.logic import BMC_STEPS
from roost_host.operations import HostOperations
from roost_host.power import BmcPower
from roost_host.store import HostStore
from roost_shared.db import Database
from roost_shared.events import utcnow
from roost_shared.outbox import Outbox
from roost_shared.retry import backoff

log = logging.getLogger(__name__)


class StepRunner:
    def __init__(
        self,
        db: Database,
        store: HostStore,
        ops: HostOperations,
        outbox: Outbox,
        poll_s: float,
        on_done: Callable[[], None] | None = None,
        power: BmcPower | None = None,
    ) -> None:
        self.db = db
        self.power = power  # power steps of hosts with a BMC go through it
        self.on_done = on_done  # e.g. wake the Kubernetes runner: a passed in-test uncordons
        self.store = store
        self.ops = ops
        self.outbox = outbox
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A step was scheduled: look again now."""
        self._wake.set()

    async def restart_interrupted(self) -> int:
        """Start every step a previous run left pending again (called once at start-up)."""
        pending = await self.store.pending()
        for doc in pending:
            step_id = doc["pending"]["id"]
            await self.db.in_transaction(
                lambda s, u=doc["uuid"], i=step_id: self.ops.restart_step(s, u, i)
            )
        if pending:
            log.warning("restarted %d timed steps interrupted by a restart", len(pending))
            self.outbox.wake()
        return len(pending)

    async def run_once(self, now: datetime | None = None) -> int:
        done = 0
        for doc in await self.store.due(now or utcnow()):
            step_id = doc["pending"]["id"]
            if doc["pending"].get("bmc"):
                # The BMC call happens outside any transaction (it may take seconds); its
                # outcome is written checked against the step id, so a lock meanwhile wins.
                error = await self._power(doc)
                finish = lambda s, u=doc["uuid"], i=step_id, e=error: (  # noqa: E731
                    self.ops.finish_power_step(s, u, i, e)
                )
            else:
                finish = lambda s, u=doc["uuid"], i=step_id: self.ops.finish_step(s, u, i)  # noqa: E731
            if await self.db.in_transaction(finish):
                done += 1
        if done:
            self.outbox.wake()
            if self.on_done is not None:
                self.on_done()
        return done

    async def _power(self, doc: dict[str, Any]) -> str | None:
        """Carry out a power step through the host's BMC; None, or why it failed."""
        step = doc["pending"]["step"]
        if self.power is None:
            return "no BMC access in this service"
        try:
            if step == "reinstall":
                await self.power.set_boot_device(doc, "network")
            await self.power.set_power(doc, BMC_STEPS[step])
        except Exception as exc:
            log.warning("%s of %s through its BMC failed: %s", step, doc.get("hostname"), exc)
            return str(exc) or type(exc).__name__
        return None

    async def run(self) -> None:
        delays = backoff(initial=0.2, cap=10.0)
        while True:
            try:
                await self.run_once()
                next_due = await self.store.next_due()
                delays = backoff(initial=0.2, cap=10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                log.warning("step runner: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            wait = self.poll_s
            if next_due is not None:
                wait = max(0.0, min(wait, (next_due - utcnow()).total_seconds()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
