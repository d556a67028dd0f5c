"""The strategy executor: runs the stages and steps of the applying strategy, one at a time.

Every step is **idempotent** and its state is persisted before and after it runs, so the
executor can be killed at any moment: at start-up it finds the strategy still ``applying`` and
runs the first step that is not done from its beginning (a lock of a locked host, an install on
a host that runs the release, an unlock of an unlocked host are all no-ops). A step waits on
conditions with a deadline (host states from the host service, the agents' install reports,
service-group instances from the service service, alarms from fault), woken early by the agents'
reports; a missed deadline or a refusal fails the step with the reason.

A failed stage stops the strategy (``apply-failed``, alarm 900.103) unless ``stop_on_failure`` is
off; its hosts are left as they are (a host whose install failed stays locked, as StarlingX leaves
it) and ``apply`` resumes from the failed step. An abort finishes the stage in flight when its
hosts are already locked (so they come back in service), or stops before the lock otherwise.

One executor runs per site: the replica holding the leader lease runs :meth:`Executor.run`
(``Platform.spawn_singleton``), and its writes are fenced by the lease (:attr:`Executor.fence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roost_shared.bus import BatchHandler, Delivery
from roost_shared.catalog import AlarmClear, AlarmSet, Severity, StrategyChanged
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow
from roost_shared.outbox import Outbox
from roost_shared.peers import PeerUnavailable
from roost_shared.problems import RoostError
from roost_software.deploy import DeployOps
from roost_software.peers import Peers, Refused
from roost_software.settings import SoftwareSettings
from roost_software.strategy_logic import BEFORE_LOCK
from roost_software.strategy_models import (
    ACTIVE,
    InstanceAction,
    StageState,
    StepState,
    StrategyState,
    StrategyView,
)
from roost_software.strategy_store import StrategyStore

log = logging.getLogger(__name__)

SOURCE = "software"
STRATEGY_ENTITY = "system=roost.strategy=sw-deploy"
#: Alarms a strategy expects while it works (its own, and hosts it locked).
EXPECTED_ALARMS = ("900.", "200.001")
RUNNING_INSTANCE = ("enabled-active", "enabled-standby")
FORCE_LOCK_HINT = "last unlocked-enabled controller"
#: True inside the executor's own loop (and the tasks it starts): its writes are fenced by the
#: leader lease; the API's writes (apply, abort) on any replica are not.
_EXECUTING: contextvars.ContextVar[bool] = contextvars.ContextVar("executing", default=False)


#: Events after which a waiting step looks again at once instead of at its next poll: host
#: transitions (lock, online, available), alarms, service groups and their instances.
WAKE_QUEUE = "software.wake"
WAKE_BINDINGS = (
    "host.state.changed",
    "fault.alarm.raised",
    "fault.alarm.cleared",
    "service.group.changed",
    "agent.instance.changed",
)


def wake_handler() -> BatchHandler:
    """The handler of :data:`WAKE_QUEUE`: nothing to record (the executor asks the owners);
    the consumer's after-commit hook wakes the executor."""

    async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
        return None

    return handle


def _activity_left(
    name: str, placed: dict[str, Any], hosts: set[str], *, standbys_too: bool = True
) -> str | None:
    """What of group ``name`` still keeps it on ``hosts``: an active there, (``standbys_too``)
    an instance still running there, or no active elsewhere yet (``None``: moved)."""
    actives = set(placed.get("active_hosts") or [])
    if actives & hosts:
        return f"{name} still active on {', '.join(sorted(actives & hosts))}"
    instances = placed.get("instances", [])
    running = [i for i in instances if i["host"] in hosts and i.get("state") in RUNNING_INSTANCE]
    if running and standbys_too:
        return f"{name} still runs on {running[0]['host']}"
    if placed.get("state") in ("disabled", "failed"):
        return None  # no activity to keep: nothing to wait for elsewhere
    elsewhere = [i for i in instances if i["host"] not in hosts]
    if elsewhere and not any(i.get("state") == "enabled-active" for i in elsewhere):
        return f"{name} not active elsewhere yet"
    return None


def _label(stage: dict[str, Any]) -> str:
    """``workers worker-1, worker-2`` or ``deploy-start``."""
    return " ".join([stage["name"], ", ".join(stage["hosts"])]).strip()


class StepFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Executor:
    """Runs the current strategy while it is ``applying`` or ``aborting``."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        store: StrategyStore,
        deploy: DeployOps,
        peers: Peers,
        settings: SoftwareSettings,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.store = store
        self.deploy = deploy
        self.peers = peers
        self.settings = settings
        self._wake = asyncio.Event()
        self._busy = False
        #: Progress that is written with the next update instead of in a transaction of its own
        #: (a step done, a stage started or done): (strategy uuid, fields). Lost with the
        #: process, which only means a finished, idempotent step runs again on resume.
        self._deferred: tuple[str, dict[str, Any]] | None = None
        #: The leader lease's fence (``Platform.fence``); None runs unfenced (one replica).
        self.fence: Callable[[Session], Awaitable[None]] | None = None

    def wake(self) -> None:
        """Something changed (an agent report, an apply or abort): look again now."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        return self._busy

    async def run(self) -> None:
        """While this replica leads: apply whenever the strategy is applying or aborting.

        Another replica's API may have started the strategy (its wake reaches only its own,
        idle executor), so an idle executor still looks every ``poll_s``."""
        _EXECUTING.set(True)
        while True:
            self._wake.clear()
            try:
                doc = await self.store.current()
                if doc is not None and doc["state"] in ACTIVE:
                    self._busy = True
                    await self._apply(doc["uuid"])
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database or a peer failed outside a step: try again shortly; the
                # strategy's persisted state says where to go on.
                log.exception("strategy executor failed; retrying in 2 s")
                await asyncio.sleep(2.0)
                continue
            finally:
                self._busy = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(self.settings.poll_s, 1.0))

    # Persistence ------------------------------------------------------------------------------

    def defer(self, uuid: str, fields: dict[str, Any]) -> None:
        """Persist ``fields`` with the next :meth:`update` of strategy ``uuid``.

        A step's end is always followed at once by the next step's start (or the stage's and
        the strategy's end), so writing both in one transaction halves the executor's
        transactions (~20-40 ms each on the embedded database; the time between steps of a 4-host
        serial rollout went from 1.07 s to 0.33 s)."""
        if self._deferred is not None and self._deferred[0] == uuid:
            fields = {**self._deferred[1], **fields}
        self._deferred = (uuid, fields)

    async def update(self, uuid: str, fields: dict[str, Any], *extra: Envelope) -> dict[str, Any]:
        """Persist ``fields`` (after what was deferred) with the progress event (and ``extra``
        events) in one transaction."""

        executing = _EXECUTING.get()
        fence = self.fence if executing else None
        # Only the executor's own (fenced) writes carry what it deferred: an API write (apply,
        # abort) on this replica must not write a possibly deposed executor's progress unfenced.
        deferred = self._deferred if executing else None
        if deferred is not None and deferred[0] == uuid:
            fields = {**deferred[1], **fields}

        async def work(session: Session) -> dict[str, Any]:
            if fence is not None:
                await fence(session)  # a deposed leader's late progress never commits
            doc = await self.store.set(session, uuid, fields)
            await self.outbox.add(session, [self.progress_event(doc)])
            for envelope in extra:
                await self.outbox.add(session, [envelope])
            return doc

        doc = await self.db.in_transaction(work)
        if deferred is not None and self._deferred is deferred:
            self._deferred = None
        self.outbox.wake()
        return doc

    def progress_event(self, doc: dict[str, Any]) -> Envelope:
        view = StrategyView.of(doc)
        current = ""
        if view.current_stage is not None:
            stage = view.stages[view.current_stage]
            step = next((s for s in stage.steps if s.state is StepState.in_progress), None)
            hosts = ", ".join(stage.hosts)
            current = f"{stage.name}" + (f" {hosts}" if hosts else "")
            if step is not None:
                current += f": {step.name}"
        return Envelope.of(
            StrategyChanged(
                uuid=view.uuid,
                release_id=view.release,
                state=view.state.value,
                stage=view.current_stage,
                stages=len(view.stages),
                steps_done=view.steps_done,
                steps_total=view.steps_total,
                current=current,
                reason=view.reason,
            ),
            source=SOURCE,
            subject=view.uuid,
        )

    @staticmethod
    def _alarm(alarm_id: str, severity: Severity, reason: str, repair: str) -> Envelope:
        return Envelope.of(
            AlarmSet(
                alarm_id=alarm_id,
                entity_instance_id=STRATEGY_ENTITY,
                entity_type_id="system.strategy",
                severity=severity,
                reason_text=reason,
                proposed_repair_action=repair,
                suppression=True,
            ),
            source=SOURCE,
            subject=STRATEGY_ENTITY,
        )

    @staticmethod
    def _clear(alarm_id: str) -> Envelope:
        return Envelope.of(
            AlarmClear(alarm_id=alarm_id, entity_instance_id=STRATEGY_ENTITY),
            source=SOURCE,
            subject=STRATEGY_ENTITY,
        )

    # The apply loop ---------------------------------------------------------------------------

    async def _apply(self, uuid: str) -> None:
        self._deferred = None  # an earlier run's (another strategy's, or before a failure)
        doc = await self.store.get()
        release = doc["release"]
        if doc.get("started_at") is None or doc.get("running_alarm") is not True:
            doc = await self.update(
                uuid,
                {"started_at": doc.get("started_at") or utcnow(), "running_alarm": True},
                self._alarm(
                    "900.101",
                    Severity.major,
                    f"Software update of {release} in progress",
                    "Wait for the update to finish (roost strategy show)",
                ),
                self._clear("900.103"),
            )
        failures: list[str] = []
        for index in range(len(doc["stages"])):
            doc = await self.store.get()
            stage = doc["stages"][index]
            if stage["state"] == StageState.done.value:
                continue
            if stage["state"] == StageState.failed.value and not doc["stop_on_failure"]:
                failures.append(f"stage {index} ({_label(stage)}): {stage['reason']}")
                continue
            outcome = await self._stage(uuid, index)
            doc = await self.store.get()
            if outcome == StageState.failed:
                reason = doc["stages"][index]["reason"]
                failures.append(f"stage {index} ({_label(stage)}): {reason}")
                if doc["stop_on_failure"]:
                    await self._finish(uuid, StrategyState.apply_failed, failures[-1])
                    return
            if outcome == StageState.aborted or doc.get("abort_requested"):
                await self._finish(uuid, StrategyState.aborted, "aborted by the operator")
                return
        if failures:
            await self._finish(uuid, StrategyState.apply_failed, "; ".join(failures))
        else:
            await self._finish(uuid, StrategyState.applied, "")

    async def _finish(self, uuid: str, state: StrategyState, reason: str) -> None:
        events = [self._clear("900.101")]
        if state is StrategyState.apply_failed:
            events.append(
                self._alarm(
                    "900.103",
                    Severity.critical,
                    f"Software update failed: {reason}"[:2048],
                    "Fix the cause, then resume it (roost strategy apply) or delete it",
                )
            )
        await self.update(
            uuid,
            {
                "state": state.value,
                "reason": reason,
                "finished_at": utcnow(),
                "current_stage": None,
                "running_alarm": False,
            },
            *events,
        )
        log.info("strategy %s %s %s", uuid, state.value, reason)

    async def _stage(self, uuid: str, index: int) -> StageState:
        """Run one stage's steps from the first not done; its final state."""
        doc = await self.store.get()
        stage = doc["stages"][index]
        prefix = f"stages.{index}"
        self.defer(
            uuid,
            {
                "current_stage": index,
                f"{prefix}.state": StageState.in_progress.value,
                f"{prefix}.started_at": stage["started_at"] or utcnow(),
                f"{prefix}.reason": "",
            },
        )
        for j, step in enumerate(stage["steps"]):
            if step["state"] in (StepState.done.value, StepState.skipped.value):
                continue
            current = await self.store.get()
            if current.get("abort_requested") and step["name"] in BEFORE_LOCK:
                rest = {
                    f"{prefix}.steps.{k}.state": StepState.skipped.value
                    for k in range(j, len(stage["steps"]))
                }
                await self.update(
                    uuid,
                    {
                        **rest,
                        f"{prefix}.state": StageState.aborted.value,
                        f"{prefix}.finished_at": utcnow(),
                        f"{prefix}.reason": "aborted before its hosts were locked",
                    },
                )
                return StageState.aborted
            spath = f"{prefix}.steps.{j}"
            await self.update(
                uuid,
                {
                    f"{spath}.state": StepState.in_progress.value,
                    f"{spath}.started_at": utcnow(),
                    f"{spath}.finished_at": None,
                    f"{spath}.reason": "",
                },
            )
            log.info("strategy %s stage %d %s: %s", uuid, index, stage["hosts"], step["name"])
            try:
                note = await self._step(current, stage, step["name"])
            except StepFailed as failed:
                reason = f"{step['name']}: {failed.reason}"
                await self.update(
                    uuid,
                    {
                        f"{spath}.state": StepState.failed.value,
                        f"{spath}.finished_at": utcnow(),
                        f"{spath}.reason": failed.reason,
                        f"{prefix}.state": StageState.failed.value,
                        f"{prefix}.finished_at": utcnow(),
                        f"{prefix}.reason": reason,
                    },
                )
                log.warning("strategy %s stage %d failed: %s", uuid, index, reason)
                return StageState.failed
            self.defer(
                uuid,
                {
                    f"{spath}.state": StepState.done.value,
                    f"{spath}.finished_at": utcnow(),
                    f"{spath}.reason": note or "",
                },
            )
        # Written with the next stage's first step, or with the strategy's end.
        self.defer(
            uuid, {f"{prefix}.state": StageState.done.value, f"{prefix}.finished_at": utcnow()}
        )
        return StageState.done

    async def _step(self, doc: dict[str, Any], stage: dict[str, Any], name: str) -> str | None:
        """Run step ``name`` of ``stage``; a note for its reason, or :class:`StepFailed`."""
        handler: Callable[[dict[str, Any], dict[str, Any]], Awaitable[str | None]] = getattr(
            self, "_step_" + name.replace("-", "_")
        )
        # A peer restarting (the host service, fault, the broker behind them) is waited for:
        # steps are idempotent, so the step simply runs again once it answers.
        deadline = time.monotonic() + self.settings.peer_outage_s
        while True:
            try:
                return await handler(doc, stage)
            except Refused as exc:
                raise StepFailed(exc.reason) from None
            except PeerUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise StepFailed(f"{exc} (for {self.settings.peer_outage_s:g} s)") from None
                log.warning("step %s waits for a peer: %s", name, exc)
                await asyncio.sleep(1.0)
            except RoostError as exc:  # a peer not configured, a refused deploy action
                raise StepFailed(str(exc)) from None

    async def _until(
        self, check: Callable[[], Awaitable[str | None]], timeout_s: float, what: str
    ) -> None:
        """Wait until ``check`` returns ``None`` (done); it returns what is still awaited. Woken
        early by :meth:`wake` (agent reports); a peer briefly away is retried until the
        deadline."""
        deadline = time.monotonic() + timeout_s
        waiting = "not checked yet"
        while True:
            try:
                left = await check()
            except PeerUnavailable as exc:
                left = str(exc)
            if left is None:
                return
            waiting = left
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StepFailed(f"{what} did not happen within {timeout_s:g} s: {waiting}")
            self._wake.clear()
            try:
                await asyncio.wait_for(
                    self._wake.wait(), timeout=min(self.settings.poll_s, remaining)
                )
            except TimeoutError:
                pass

    # Steps ------------------------------------------------------------------------------------

    async def _step_precheck(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        current = await self.deploy.current()
        if current is not None and current.release == doc["release"]:
            return "the deployment was already started"
        if current is not None and current.state != "deployed":
            raise StepFailed(f"release {current.release} is being deployed; finish it first")
        result = await self.deploy.precheck(doc["release"])
        failed = [c for c in result.checks if not c.ok]
        if failed:
            raise StepFailed(
                "; ".join(f"{c.check}{' ' + c.host if c.host else ''}: {c.reason}" for c in failed)
            )
        return f"{len(result.checks)} checks passed"

    async def _step_deploy_start(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        current = await self.deploy.current()
        if current is not None and current.release == doc["release"]:
            return "already deploying"
        if current is not None and current.state != "deployed":
            raise StepFailed(f"release {current.release} is being deployed; finish it first")
        await self.deploy.start(doc["release"])
        return None

    async def _step_query_alarms(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        """Blocking alarms stop the stage before it touches anything; one that clears by itself
        within ``query_alarms_wait_s`` (a service-link path hiccup while the previous host
        restarted, say) does not stop the update."""

        async def clear() -> str | None:
            found = await self._blocking(doc, stage)
            return "blocking alarms: " + ", ".join(found[:10]) if found else None

        await self._until(clear, self.settings.query_alarms_wait_s, "alarms clearing")
        return None

    async def _blocking(self, doc: dict[str, Any], stage: dict[str, Any]) -> list[str]:
        strict = doc["alarm_restrictions"] == "strict"
        found = await self.peers.blocking_alarms(strict)
        return [a for a in found if not a.startswith(EXPECTED_ALARMS)]

    async def _members(self, hosts: list[str]) -> dict[str, list[str]]:
        """Service groups with a member among ``hosts``: name → those hosts."""
        out: dict[str, list[str]] = {}
        for name, members in (await self.peers.group_members()).items():
            mine = sorted(set(members).intersection(hosts))
            if mine:
                out[name] = mine
        return out

    async def _step_swact_services(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        """Move each service group's activity off the stage's hosts with a planned swact (go
        standby, then go active elsewhere: ~70 ms without an active), then keep the group off
        them with a member lock until ``restore-services``. A group without a healthy standby
        cannot swact (409): the member lock then moves it (a takeover, slower)."""
        hosts = set(stage["hosts"])
        groups = await self._members(stage["hosts"])
        notes = []
        for name in groups:
            placed = await self.peers.instances(name) or {}
            if hosts.intersection(placed.get("active_hosts") or []):
                refused = await self.peers.swact(name)
                if refused:
                    notes.append(f"{name}: no swact ({refused}); taken over")
                    continue

                async def switched(name: str = name) -> str | None:
                    placed = await self.peers.instances(name) or {}
                    return _activity_left(name, placed, hosts, standbys_too=False)

                await self._until(switched, self.settings.drain_timeout_s, f"swact of {name}")
        for name, members in groups.items():
            for h in members:
                await self.peers.member(name, h, "lock")

        async def moved() -> str | None:
            for name in groups:
                left = _activity_left(name, await self.peers.instances(name) or {}, hosts)
                if left:
                    return left
            return None

        await self._until(moved, self.settings.drain_timeout_s, "moving service activity away")
        if not groups:
            return "no service groups on these hosts"
        return "; ".join(["moved away: " + ", ".join(sorted(groups)), *notes])

    async def _views(self, hosts: list[str]) -> dict[str, dict[str, Any]]:
        """The host service's view of each host, asked concurrently (``{}`` if unknown)."""
        views = await asyncio.gather(*(self.peers.host(h) for h in hosts))
        return {h: v or {} for h, v in zip(hosts, views, strict=True)}

    async def _step_lock_hosts(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        reason = f"software update to {doc['release']}"

        async def lock(h: str, view: dict[str, Any]) -> str | None:
            if not view:
                raise StepFailed(f"the host service does not know {h}")
            if view["administrative"] == "locked":
                return None
            try:
                await self.peers.host_action(h, "lock", reason)
            except Refused as exc:
                if FORCE_LOCK_HINT not in exc.reason:
                    raise
                # The only controller (a simplex site): StarlingX locks it too; nothing else
                # can take its place, so its services stop for the update.
                await self.peers.host_action(h, "force-lock", reason + " (the only controller)")
                return f"{h} force-locked: the only controller"
            return None

        views = await self._views(stage["hosts"])
        notes = await asyncio.gather(*(lock(h, v) for h, v in views.items()))
        if doc["default_instance_action"] == InstanceAction.migrate.value:

            async def drained() -> str | None:
                for h, view in (await self._views(stage["hosts"])).items():
                    kube = view.get("kube") or {}
                    if kube.get("op") != "drain":
                        continue
                    if kube.get("status") == "pending":
                        return f"{h}: workloads still being moved"
                    if kube.get("status") not in ("drained", "done"):
                        raise StepFailed(
                            f"{h}: workloads could not be moved: {kube.get('status')} "
                            f"{kube.get('message', '')}".strip()
                        )
                return None

            await self._until(drained, self.settings.drain_timeout_s, "the drain")
        return "; ".join(n for n in notes if n) or None

    async def _step_install(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        await self.deploy.deploy_hosts(stage["hosts"], check_locked=True)

        async def installed() -> str | None:
            waiting = []
            for h, state in (await self.deploy.host_states(stage["hosts"])).items():
                if state is None:
                    waiting.append(f"{h}: no deploy state")
                elif state.state == "failed":
                    raise StepFailed(f"{h}: {state.reason or 'install failed'}")
                elif state.state == "installed":
                    continue
                elif state.pending_reboot or state.agent_state in ("rebooting", "activating"):
                    continue  # staged; the reboot step waits for the rest
                else:
                    waiting.append(f"{h}: {state.agent_state or state.state}")
            return "; ".join(waiting) or None

        await self._until(installed, self.settings.install_timeout_s, "the install")
        return None

    async def _step_reboot(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        async def rebooted() -> str | None:
            waiting = []
            for h, state in (await self.deploy.host_states(stage["hosts"])).items():
                if state is not None and state.state == "failed":
                    raise StepFailed(f"{h}: {state.reason or 'failed after its reboot'}")
                if state is None or state.state != "installed":
                    waiting.append(f"{h}: {state.agent_state if state else 'unknown'}")
            return "; ".join(waiting) or None

        await self._until(rebooted, self.settings.install_timeout_s, "the reboot")
        return None

    async def _step_unlock_hosts(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        pending = set(stage["hosts"])
        reason = f"software update to {doc['release']}"

        async def unlock(h: str, view: dict[str, Any]) -> None:
            if view.get("administrative") == "unlocked":
                pending.discard(h)
                return
            if view.get("availability") != "online" or view.get("task"):
                return  # still booting: unlock needs it online
            try:
                await self.peers.host_action(h, "unlock", reason)
                pending.discard(h)
            except Refused as exc:
                if "offline" not in exc.reason and "in progress" not in exc.reason:
                    raise StepFailed(f"{h}: {exc.reason}") from None

        async def unlocked() -> str | None:
            views = await self._views(sorted(pending))
            await asyncio.gather(*(unlock(h, v) for h, v in views.items()))
            return f"waiting for {', '.join(sorted(pending))} to be online" if pending else None

        await self._until(unlocked, self.settings.host_ready_timeout_s, "the unlock")
        return None

    async def _step_wait_hosts_available(
        self, doc: dict[str, Any], stage: dict[str, Any]
    ) -> str | None:
        async def available() -> str | None:
            waiting = []
            for h, view in (await self._views(stage["hosts"])).items():
                if view.get("availability") == "failed":
                    raise StepFailed(f"{h} failed after its unlock ({view.get('task') or ''})")
                if (view.get("operational"), view.get("availability")) != ("enabled", "available"):
                    waiting.append(
                        f"{h} is {view.get('administrative')}-{view.get('operational')}-"
                        f"{view.get('availability')}"
                    )
            return "; ".join(waiting) or None

        await self._until(available, self.settings.host_ready_timeout_s, "hosts available")
        return None

    async def _step_restore_services(
        self, doc: dict[str, Any], stage: dict[str, Any]
    ) -> str | None:
        hosts = stage["hosts"]
        groups = await self._members(hosts)
        for name, members in groups.items():
            for h in members:
                await self.peers.member(name, h, "unlock")

        async def restored() -> str | None:
            for name, members in groups.items():
                placed = await self.peers.instances(name) or {}
                for h in members:
                    mine = [i for i in placed.get("instances", []) if i["host"] == h]
                    if not mine or any(i.get("state") not in RUNNING_INSTANCE for i in mine):
                        states = ", ".join(i.get("state", "?") for i in mine) or "not placed"
                        return f"{name} on {h}: {states}"
            return None

        await self._until(restored, self.settings.host_ready_timeout_s, "redundancy restored")
        return ("back: " + ", ".join(sorted(groups))) if groups else None

    async def _step_wait_alarms_clear(
        self, doc: dict[str, Any], stage: dict[str, Any]
    ) -> str | None:
        async def clear() -> str | None:
            found = await self._blocking(doc, stage)
            return ", ".join(found[:10]) if found else None

        await self._until(clear, self.settings.alarm_wait_s, "alarms clearing")
        return None

    async def _step_wait_deployed(self, doc: dict[str, Any], stage: dict[str, Any]) -> str | None:
        async def deployed() -> str | None:
            current = await self.deploy.current()
            if current is None or current.release != doc["release"]:
                return None
            busy = [h.hostname for h in current.hosts if h.state == "installing"]
            return f"still installing: {', '.join(busy)}" if busy else None

        await self._until(deployed, self.settings.install_timeout_s, "the deployment")
        current = await self.deploy.current()
        if current is not None and current.state != "deployed":
            left = [h.hostname for h in current.hosts if h.state != "installed"]
            return f"not updated by this strategy: {', '.join(left)}"
        return None
