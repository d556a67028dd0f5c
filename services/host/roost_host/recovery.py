"""Auto-recovery of failed hosts: fence, power on, wait for the agent, in-test, enable.

A failure (:meth:`HostOperations.fail`) stores ``recovery: {id, attempt, phase, due, why}`` in
the host document in the same transaction; this runner moves it on, one host at a time, each
move a transition written with the recovery's id checked (a lock, which clears ``recovery``,
always wins):

========== ==============================================================================
phase      what happens when it is due
========== ==============================================================================
fence      BMC power off, then read the power state until it says off (``recovery_fence_s``)
power-on   BMC power on
boot       wait for the host's heartbeats until ``recovery_boot_s`` after the power-on
wait       no BMC (or the agent announced a clean stop): wait for the host to come back;
           with a BMC, fence when ``due`` passes
backoff    wait, then fence again (attempt n+1)
========== ==============================================================================

Heard again in ``fence`` (before power is touched), ``wait``, ``backoff`` or ``boot`` → the
in-test runs (unlocked-disabled-intest); when it passes the host is enabled and available, 200.004
is cleared and the recovery ends; when it fails the host fails again with the next attempt. A
failed attempt (BMC error, power not off in time, no heartbeat after power-on) waits
``recovery_backoff_s`` * 2^(n-1); after ``recovery_attempts`` the host stays failed, 200.004
says why, and nothing more is tried until the operator locks it.

**Never power-cycle a host that is heard**: right before the power-off the host's liveness is
checked again; heard on any path means it returned by itself (a reboot, a network blip), and the
in-test runs without any power action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from roost_host import logic
from roost_host.monitor import HeartbeatMonitor
from roost_host.operations import HostOperations
from roost_host.settings import HostSettings
from roost_shared.db import Database
from roost_shared.events import utcnow

T = TypeVar("T")

log = logging.getLogger(__name__)

ACTIVE = ("fence", "power-on", "boot", "wait", "backoff")


class PowerControl(Protocol):
    """A host's BMC as recovery needs it (the IPMI pool behind it bounds and retries calls)."""

    def has_bmc(self, doc: dict[str, Any]) -> bool: ...

    async def power_state(self, doc: dict[str, Any]) -> str: ...

    async def set_power(self, doc: dict[str, Any], state: str) -> str: ...


class RecoveryRunner:
    def __init__(
        self,
        settings: HostSettings,
        db: Database,
        ops: HostOperations,
        monitor: HeartbeatMonitor,
        power: PowerControl | None,
        *,
        on_intest: Callable[[], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ops = ops
        self.monitor = monitor
        self.power = power
        self.on_intest = on_intest
        self.on_change = on_change
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            # Phases fall due on the clock: look every 0.1 s while a host is recovering, and
            # otherwise only when woken (a failure) or once a second.
            period = 0.1 if self.monitor.recovering else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            try:
                self.run_once(utcnow())
            except Exception:
                log.exception("recovery runner: continuing")

    def run_once(self, now: datetime) -> None:
        for tracked in list(self.monitor.recovering.values()):
            doc = tracked.doc
            rec = doc.get("recovery") or {}
            if rec.get("phase") not in ACTIVE or doc["uuid"] in self._busy:
                continue
            due = rec.get("due")
            alive = self.monitor.alive(doc)
            if rec["phase"] != "power-on" and alive:
                self._start(doc, rec, self._returned(doc, rec))
            elif due is not None and _aware(due) <= now:
                self._start(doc, rec, self._due(doc, rec))

    def _start(self, doc: dict[str, Any], rec: dict[str, Any], coro: Any) -> None:
        uuid = doc["uuid"]
        self._busy.add(uuid)

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("recovery of %s: step failed; will look again", uuid)
            finally:
                self._busy.discard(uuid)
                if self.on_change is not None:
                    self.on_change()

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Phases ------------------------------------------------------------------------------------

    async def _returned(self, doc: dict[str, Any], rec: dict[str, Any]) -> None:
        if rec["phase"] == "boot":
            cause = "host heartbeats again after its power-on; running its in-test"
        else:
            cause = "host heartbeats again by itself; no power action; running its in-test"
        ok = await self._commit(
            lambda s: self.ops.recovery_returned(
                s, doc["uuid"], rec["id"], cause, logic.RECOVERY_RETURNED
            )
        )
        if ok:
            log.info("host %s returned (%s)", doc.get("hostname"), rec["phase"])
            if self.on_intest is not None:
                self.on_intest()

    async def _due(self, doc: dict[str, Any], rec: dict[str, Any]) -> None:
        phase = rec["phase"]
        if phase in ("fence", "wait", "backoff", "power-on") and not self._can_fence(doc):
            await self._move(doc, rec, "wait", None, "no BMC: waiting for the host to return")
            return
        if phase in ("fence", "wait", "backoff"):
            if rec.get("attempt", 1) > self.settings.recovery_attempts:
                await self._give_up(doc, rec, "no attempts left")
            elif phase == "fence":
                await self._fence(doc, rec)
            else:
                why = "retrying" if phase == "backoff" else "it did not come back by itself"
                await self._move(
                    doc, rec, "fence", utcnow(), f"fencing: {why}", logic.RECOVERY_FENCE
                )
        elif phase == "power-on":
            await self._power_on(doc, rec)
        elif phase == "boot":
            await self._failed_attempt(
                doc,
                rec,
                f"no heartbeat within {self.settings.recovery_boot_s:g} s of the power-on",
            )

    def _can_fence(self, doc: dict[str, Any]) -> bool:
        return self.power is not None and self.power.has_bmc(doc)

    async def _fence(self, doc: dict[str, Any], rec: dict[str, Any]) -> None:
        """Power off and read it back (``_due`` checked there is a BMC)."""
        assert self.power is not None
        if self.monitor.alive(doc):
            return  # heard after all: the next pass starts its in-test, no power action
        full = await self.ops.store.by_uuid(doc["uuid"])  # with its BMC credentials
        if full is None:
            return
        try:
            # The power state read right after the command (``set_power`` returns it) usually
            # confirms the fence already; otherwise read it until it does.
            state = await self.power.set_power(full, "off")
            deadline = time.monotonic() + self.settings.recovery_fence_s
            while state != "off":
                await asyncio.sleep(0.2)
                state = await self.power.power_state(full)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"BMC still reports power {state} "
                        f"{self.settings.recovery_fence_s:g} s after power off"
                    )
        except Exception as exc:
            await self._failed_attempt(doc, rec, f"fencing failed: {exc}")
            return
        log.warning("host %s fenced (BMC power off confirmed)", doc.get("hostname"))
        await self._move(
            doc,
            rec,
            "power-on",
            utcnow(),
            "fenced: BMC confirms power off; powering on",
            logic.RECOVERY_FENCED,
        )

    async def _power_on(self, doc: dict[str, Any], rec: dict[str, Any]) -> None:
        """Power on (``_due`` checked there is a BMC)."""
        assert self.power is not None
        full = await self.ops.store.by_uuid(doc["uuid"])
        if full is None:
            return
        try:
            await self.power.set_power(full, "on")
        except Exception as exc:
            await self._failed_attempt(doc, rec, f"power-on failed: {exc}")
            return
        boot_s = self.settings.recovery_boot_s
        await self._move(
            doc,
            rec,
            "boot",
            utcnow() + timedelta(seconds=boot_s),
            f"powered on through the BMC; waiting up to {boot_s:g} s for its heartbeats",
            logic.RECOVERY_POWER_ON,
        )

    async def _failed_attempt(self, doc: dict[str, Any], rec: dict[str, Any], why: str) -> None:
        attempt = int(rec.get("attempt", 1))
        if attempt >= self.settings.recovery_attempts:
            await self._give_up(doc, rec, f"{why} (attempt {attempt} of {attempt})")
            return
        delay = min(300.0, self.settings.recovery_backoff_s * 2 ** (attempt - 1))
        log.warning(
            "recovery of %s: %s; attempt %d in %.0f s", doc.get("hostname"), why, attempt + 1, delay
        )
        await self._move(
            doc,
            rec,
            "backoff",
            utcnow() + timedelta(seconds=delay),
            f"attempt {attempt} failed: {why}; attempt {attempt + 1} in {delay:g} s",
            logic.RECOVERY_RETRY,
            attempt=attempt + 1,
        )

    async def _give_up(self, doc: dict[str, Any], rec: dict[str, Any], why: str) -> None:
        log.error("recovery of %s gave up: %s", doc.get("hostname"), why)
        await self._commit(lambda s: self.ops.recovery_gave_up(s, doc["uuid"], rec["id"], why))

    async def _move(
        self,
        doc: dict[str, Any],
        rec: dict[str, Any],
        phase: str,
        due: datetime | None,
        cause: str,
        reason: str = logic.RECOVERY_WAITING,
        attempt: int | None = None,
    ) -> None:
        await self._commit(
            lambda s: self.ops.recovery_move(
                s,
                doc["uuid"],
                rec["id"],
                phase=phase,
                due=due,
                cause=cause,
                reason=reason,
                attempt=attempt,
            )
        )

    async def _commit(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction, then wake the outbox relay: a recovery transition
        (``recovery-fenced`` above all: the service service takes over on it) must not wait
        for the relay's 1 s poll (measured: it did, ~1 s of a 1.3 s takeover)."""
        result = await self.db.in_transaction(work)
        self.ops.outbox.wake()
        return result

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _aware(when: datetime) -> datetime:
    """Datetimes are UTC; a naive one (written by hand, or an older client) is taken as UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)
