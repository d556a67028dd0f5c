"""Service instances assigned to this host: the service service's commands wired to the monitor.

* ``service.instance.assign`` (:class:`InstanceAssign`) runs one instance under
  :mod:`roost_agent.pmon` with ``ROOST_ROLE``, ``ROOST_FENCING_TOKEN`` and ``ROOST_HOST`` in its
  environment:

  - a fencing token lower than the one the instance runs with is **stale**: refused, the
    current state re-reported with a reason that says so (a delayed or duplicated command from
    an old lease holder must not demote or restart what a newer one decided);
  - a spec that is not a valid :class:`~roost_agent.pmon.ProcessSpec` is refused: reported
    ``failed`` with the validation errors on one line (if an earlier valid assignment is still
    running it keeps running: a bad message stops nothing);
  - the same role, token and spec as what runs: nothing restarts, the current state is
    re-reported (commands are re-sent after outages; they must be harmless);
  - otherwise (new role, higher token, changed spec, or an instance that failed or stopped):
    the process is stopped and started again with the new environment.

* ``service.instance.remove`` (:class:`InstanceRemove`) stops it (SIGTERM, SIGKILL after the
  spec's ``stop_timeout_s``), reports ``stopped`` and forgets it.

* Every monitor transition becomes an ``agent.instance.changed`` (:class:`InstanceChanged`)
  handed to ``report`` -- which must not block (the agent queues it, see
  :mod:`roost_agent.reports`).

**Activity leases** (:mod:`roost_shared.smlink`): an ``active`` assignment that carries
``lease_expires_at`` runs as active only while its lease is known to be held: the assign itself
and every ``grant`` the service link brings (on any path) extend it; ``margin_s`` before it runs
out unheard, the instance **steps down**: it is restarted as ``standby`` (``ROOST_ROLE=standby``,
no fencing token), not stopped (the agent keeps its services running through a disconnection;
only the activity is given up, because after the expiry the controller may grant it to another
host). A later grant for the same token promotes it back. An agent restarted after its lease ran
out (a reboot, a fence) therefore resumes its actives as standby until a grant says otherwise.

Assignments are kept in ``state_dir/instances.json`` (written atomically), so a restarted agent
first reaps what its predecessor's children left (:meth:`ProcessMonitor.reap_leftovers`) and
then starts its instances again with the same role and token. Nothing here knows the bus: a
broker outage stops no instance.

The monitor (and the ctypes it needs) is created only when this host has or had instances, so
an agent that runs no services pays nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from roost_agent.state import write_atomic
from roost_shared.catalog import InstanceAssign, InstanceChanged, InstanceRemove, InstanceRestart
from roost_shared.smlink import Lease

if TYPE_CHECKING:
    from roost_agent.pmon import ProcessMonitor, ProcessSpec, Transition

log = logging.getLogger(__name__)

ROLE_ENV = "ROOST_ROLE"
HOST_ENV = "ROOST_HOST"  # the host's name (simulated hosts share one kernel hostname)
INSTANCES_FILE = "instances.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# report(payload, correlation id): must return at once.
Report = Callable[[InstanceChanged, str | None], None]


def pmon_name(instance_id: str) -> str:
    """The monitor's name for an instance: the id itself when it is a safe file name (the
    monitor records process groups as ``pmon/<name>.json``), else a readable prefix + hash."""
    if _NAME.fullmatch(instance_id):
        return instance_id
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", instance_id).lstrip("_.-")[:48] or "i"
    return f"{readable}-{hashlib.sha256(instance_id.encode()).hexdigest()[:12]}"


def one_line(exc: ValidationError) -> str:
    """Pydantic's errors as ``spec.<field>: <message>; ...`` on one line."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in ("spec", *error["loc"]))
        parts.append(f"{where}: {error['msg']}")
    return "invalid spec: " + "; ".join(parts).replace("\n", " ")


def is_stale(new: int | None, current: int | None) -> bool:
    """A token lower than the running one is stale; without tokens nothing is."""
    return new is not None and current is not None and new < current


class Instances:
    """This host's assigned instances, their processes and their reports."""

    def __init__(
        self,
        *,
        mgmt_mac: str,
        hostname: str,
        state_dir: Path,
        report: Report,
        margin_s: float = 0.5,
        max_lease_s: float = 4.0,
    ) -> None:
        """``max_lease_s``: no lease is believed to run longer than this from now, whatever
        expiry an assign or a grant carries (a forged or mistaken far-future one included)."""
        self.mgmt_mac, self.hostname = mgmt_mac, hostname
        self.margin_s = margin_s
        self.max_lease_s = max_lease_s
        #: Expiries cut down to now + ``max_lease_s`` (each logged the first time per instance).
        self.clamped = 0
        self._clamped_logged: set[str] = set()
        self._lease_until: dict[str, float] = {}  # active instance id -> monotonic deadline
        self._down: set[str] = set()  # actives running as standby: their lease lapsed
        self._watch: asyncio.Task[None] | None = None
        self._promotions: set[asyncio.Task[None]] = set()
        self._lease_added = asyncio.Event()
        self.state_dir = state_dir
        self._path = state_dir / INSTANCES_FILE
        self._report = report
        self._monitor: ProcessMonitor | None = None
        self._assigned: dict[str, InstanceAssign] = {}  # by instance id, as persisted
        # Removed instances' last fencing tokens (persisted): older assigns are refused.
        self._retired: dict[str, int] = {}
        # Id of the last command applied per instance (persisted), carried by its reports.
        self._commands: dict[str, str] = {}
        self._ids: dict[str, str] = {}  # monitor name -> instance id
        self._notes: dict[str, str] = {}  # instance id -> why it is being stopped
        self._started = False

    # Lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Reap leftovers of a previous agent and start the persisted instances (idempotent;
        needs the running loop, not the broker: services come back before the bus does)."""
        if self._started:
            return
        self._started = True
        self._assigned = self._load()
        if not self._assigned and not (self.state_dir / "pmon").is_dir():
            return  # never ran a service: no monitor, no ctypes
        killed = self.monitor.reap_leftovers()
        if killed:
            log.warning("killed %d process(es) left by the previous agent: %s", len(killed), killed)
        for assignment in self._assigned.values():
            self._hold_from(assignment)
            if self._lease_until.pop(assignment.instance_id, None) is not None:
                # The persisted expiry may still lie ahead while the controller already gave the
                # activity away (it does not wait for the expiry of a fenced host): a restarted
                # agent runs it as standby until a grant for its token arrives (≤ one link
                # period when the lease is still held).
                self._down.add(assignment.instance_id)
            log.info(
                "resuming %s as %s (token %s)",
                assignment.instance_id,
                self._role(assignment),
                assignment.fencing_token,
            )
            self._run(assignment, None)

    async def stop(self) -> None:
        """Stop every process (the agent is shutting down); assignments stay on disk."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._monitor is None:
            return
        for instance_id in self._assigned:
            self._notes[instance_id] = "agent stopping"
        await self._monitor.stop_all()

    @property
    def monitor(self) -> ProcessMonitor:
        if self._monitor is None:
            from roost_agent.pmon import ProcessMonitor  # only hosts with instances pay for it

            self._monitor = ProcessMonitor(on_change=self._on_change, state_dir=self.state_dir)
        return self._monitor

    # Commands --------------------------------------------------------------------------------

    async def assign(
        self, command: InstanceAssign, correlationid: str | None = None, command_id: str = ""
    ) -> str:
        """Handle ``service.instance.assign``; returns the outcome (for logs and metrics).
        ``command_id`` (the command envelope's id) is carried by every later report of the
        instance once the assign is applied (also when it changes nothing)."""
        key = command.instance_id
        current = self._assigned.get(key)
        retired = self._retired.get(key)
        token = command.fencing_token
        if current is None and retired is not None and token is not None and token <= retired:
            # Removed after running with token ``retired``: an active assign that is not newer
            # is a delayed command from before the removal; starting it would revive an active
            # that was taken away. (A standby carries no token: starting one is harmless.)
            log.warning("refused assign of removed %s: token %s", key, command.fencing_token)
            self._send(
                command,
                "stopped",
                f"stale assign refused: removed after running with fencing token {retired}",
                correlationid,
            )
            return "stale"
        if current is not None and is_stale(command.fencing_token, current.fencing_token):
            log.warning(
                "refused stale assign of %s: token %s < %s",
                key,
                command.fencing_token,
                current.fencing_token,
            )
            self._report_status(
                current,
                f"stale assign refused: fencing token {command.fencing_token} "
                f"< {current.fencing_token} it runs with",
                correlationid,
            )
            return "stale"
        running = current is not None and self._state(current) not in (None, "failed", "stopped")
        try:
            self._spec(command)
        except ValidationError as exc:
            reason = one_line(exc)
            log.warning("refused assign of %s: %s", key, reason)
            if running:
                assert current is not None
                self._report_status(
                    current, f"assign refused, still running: {reason}", correlationid
                )
            else:
                self._send(command, "failed", reason, correlationid)
            return "invalid"
        was_down = key in self._down
        self._hold_from(command, current)
        if running and _same(command, current) and was_down == (key in self._down):
            assert current is not None
            self._applied(key, command_id)
            self._report_status(current, "", correlationid)
            return "unchanged"
        if current is not None and self._state(current) is not None:
            self._notes[key] = _change(current, command)
            await self.monitor.stop(pmon_name(key))
            self._notes.pop(key, None)
        self._assigned[key] = command
        self._retired.pop(key, None)
        self._applied(key, command_id, save=False)
        self._save()
        self._run(command, correlationid)
        return "started" if current is None else "restarted"

    async def restart(
        self, command: InstanceRestart, correlationid: str | None = None, command_id: str = ""
    ) -> str:
        """Handle ``service.instance.restart``: stop and start again, same role and token."""
        current = self._assigned.get(command.instance_id)
        if current is None:
            self._send(command, "stopped", "restart refused: not assigned on this host", None)
            return "unknown"
        self._applied(command.instance_id, command_id)
        if self._state(current) is not None:
            self._notes[command.instance_id] = "restarted by the operator"
            await self.monitor.stop(pmon_name(command.instance_id))
            self._notes.pop(command.instance_id, None)
        self._run(current, correlationid)
        return "restarted"

    def _applied(self, key: str, command_id: str, *, save: bool = True) -> None:
        if command_id:
            self._commands[key] = command_id
            if save:
                self._save()

    # Activity leases ---------------------------------------------------------------------------

    def grant(self, leases: Iterable[Lease]) -> None:
        """Leases from the service link: extend each held one; promote a stepped-down active
        whose token is granted again (a grant for another token is ignored)."""
        for lease in leases:
            assignment = self._assigned.get(lease.i)
            if (
                assignment is None
                or assignment.role != "active"
                or assignment.fencing_token != lease.k
                or assignment.lease_expires_at is None
            ):
                continue
            self._extend(lease.i, lease.e / 1000)
            if lease.i not in self._lease_until:
                continue  # already expired (a late grant): nothing to extend
            self._ensure_watch()  # the watch ends when no lease is held; this one is again
            if lease.i in self._down:
                self._down.discard(lease.i)
                log.warning("%s: lease (token %s) granted again; active again", lease.i, lease.k)
                task = asyncio.get_running_loop().create_task(
                    self._restart_as(assignment, "lease granted again: active")
                )
                self._promotions.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._promotions.discard)

    def holds_leases(self) -> bool:
        """True while any assignment is watched by a lease (the link must keep talking)."""
        return any(a.lease_expires_at is not None for a in self._assigned.values())

    def _hold_from(
        self, assignment: InstanceAssign, previous: InstanceAssign | None = None
    ) -> None:
        """Start watching an assignment's lease: active from its own expiry, or stepped down.
        The same role and token as ``previous`` (a re-sent assign) keeps what grants extended."""
        key = assignment.instance_id
        same = previous is not None and (previous.role, previous.fencing_token) == (
            assignment.role,
            assignment.fencing_token,
        )
        if not same:
            self._lease_until.pop(key, None)
        self._down.discard(key)
        if assignment.role != "active" or assignment.lease_expires_at is None:
            self._lease_until.pop(key, None)
            return
        self._extend(key, assignment.lease_expires_at.timestamp())
        if key not in self._lease_until:
            self._down.add(key)
            log.warning("%s: its lease has already run out; running it as standby", key)
        self._ensure_watch()

    def _extend(self, key: str, expires_epoch_s: float) -> None:
        remaining = expires_epoch_s - time.time()
        if remaining > self.max_lease_s:
            self.clamped += 1
            if key not in self._clamped_logged:
                self._clamped_logged.add(key)
                log.warning(
                    "%s: lease expiry %.0f s ahead cut to %.0f s (the longest believed)",
                    key,
                    remaining,
                    self.max_lease_s,
                )
            remaining = self.max_lease_s
        deadline = time.monotonic() + remaining - self.margin_s
        if deadline > max(time.monotonic(), self._lease_until.get(key, 0.0)):
            if key not in self._lease_until:
                self._lease_added.set()  # maybe earlier than what the watch sleeps towards
            self._lease_until[key] = deadline

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(
                self._watch_leases(), name="lease-watch"
            )

    async def _watch_leases(self) -> None:
        """Step down every active whose lease deadline passed unheard. Sleeps until the
        earliest deadline (extensions only move deadlines later; a new lease wakes it), so an
        active host wakes for this about once per lease term, not on a fixed tick."""
        while self._lease_until:
            self._lease_added.clear()
            earliest = min(self._lease_until.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._lease_added.wait(), max(0.0, earliest - time.monotonic())
                )
            now = time.monotonic()
            for key, deadline in list(self._lease_until.items()):
                if now < deadline:
                    continue
                del self._lease_until[key]
                assignment = self._assigned.get(key)
                if assignment is None or key in self._down:
                    continue
                self._down.add(key)
                why = (
                    f"stepped down: activity lease (token {assignment.fencing_token}) not "
                    f"renewed on any path; standby until granted again"
                )
                log.warning("%s: %s", key, why)
                await self._restart_as(assignment, why)

    async def _restart_as(self, assignment: InstanceAssign, why: str) -> None:
        key = assignment.instance_id
        if self._assigned.get(key) is not assignment:
            return  # reassigned meanwhile: the new assignment decides
        if self._state(assignment) is not None:
            self._notes[key] = why
            await self.monitor.stop(pmon_name(key))
            self._notes.pop(key, None)
        if self._assigned.get(key) is assignment:
            self._run(assignment, None)

    def _role(self, assignment: InstanceAssign) -> str:
        """The role the instance runs with now: standby while its lease lapsed."""
        return "standby" if assignment.instance_id in self._down else assignment.role

    async def remove(
        self, command: InstanceRemove, correlationid: str | None = None, command_id: str = ""
    ) -> str:
        """Handle ``service.instance.remove``: stop, report ``stopped``, forget."""
        key = command.instance_id
        current = self._assigned.get(key)
        if current is None:
            self._send(command, "stopped", "not assigned on this host", correlationid, command_id)
            return "unknown"
        self._applied(key, command_id, save=False)  # its stop reports acknowledge the remove
        name = pmon_name(key)
        state = self._state(current)
        if state is None:  # never ran (its spec was refused)
            self._send(current, "stopped", "removed", correlationid)
        elif state == "stopped":  # stopping it again would report nothing
            self._report_status(current, "removed", correlationid)
        else:
            self._notes[key] = "removed"
            await self.monitor.stop(name)
        self._notes.pop(key, None)
        del self._assigned[key]
        self._commands.pop(key, None)
        if current.fencing_token is not None:
            self._retired[key] = max(current.fencing_token, self._retired.get(key, 0))
        self._lease_until.pop(key, None)
        self._down.discard(key)
        self._ids.pop(name, None)
        if self._monitor is not None:
            self._monitor.forget(name)
        self._save()
        return "removed"

    # Processes -------------------------------------------------------------------------------

    def _spec(self, command: InstanceAssign) -> ProcessSpec:
        """The command's spec validated, named for the monitor, with role and token set (ours
        override the sender's: a spec must not choose its own token)."""
        from roost_agent.pmon import FENCING_ENV, ProcessSpec

        spec = ProcessSpec.model_validate(command.spec)
        env = {k: v for k, v in (spec.env or {}).items() if k != FENCING_ENV}
        down = command.instance_id in self._down
        env[ROLE_ENV] = "standby" if down else command.role
        env[HOST_ENV] = self.hostname
        return spec.model_copy(
            update={
                "name": pmon_name(command.instance_id),
                "env": env,
                "fencing_token": None if down else command.fencing_token,
            }
        )

    def _run(self, command: InstanceAssign, correlationid: str | None) -> None:
        try:
            spec = self._spec(command)
        except ValidationError as exc:  # a persisted spec this version no longer accepts
            self._send(command, "failed", one_line(exc), correlationid)
            return
        self._ids[spec.name] = command.instance_id
        self.monitor.start(spec)

    def _state(self, assignment: InstanceAssign) -> str | None:
        if self._monitor is None:
            return None
        try:
            return self._monitor.status(pmon_name(assignment.instance_id)).state
        except KeyError:
            return None

    # Reports ---------------------------------------------------------------------------------

    def _on_change(self, transition: Transition) -> None:
        """A monitor transition -> ``agent.instance.changed`` (synchronous, never blocks)."""
        instance_id = self._ids.get(transition.name)
        assignment = self._assigned.get(instance_id) if instance_id is not None else None
        if assignment is None:
            return
        note = self._notes.get(assignment.instance_id, "")
        reason = transition.reason
        if note:
            reason = f"{reason} ({note})" if reason else note
        self._report(
            self._changed(
                assignment,
                transition.state,
                reason,
                at=datetime.fromtimestamp(transition.at, UTC),
                pid=transition.pid,
                code=transition.code,
                signal=transition.signal,
            ),
            None,
        )

    def _report_status(
        self, assignment: InstanceAssign, reason: str, correlationid: str | None
    ) -> None:
        """Re-report what the monitor says about an instance (with ``reason`` if given)."""
        status = self.monitor.status(pmon_name(assignment.instance_id))
        self._report(
            self._changed(
                assignment,
                status.state,
                reason or status.reason,
                at=datetime.now(UTC),
                pid=status.pid,
                code=status.last_code if status.state in ("exited", "failed") else None,
                signal=status.last_signal if status.state in ("exited", "failed") else None,
            ),
            correlationid,
        )

    def _send(
        self,
        command: InstanceAssign | InstanceRemove | InstanceRestart,
        state: str,
        reason: str,
        correlationid: str | None,
        command_id: str | None = None,
    ) -> None:
        """Report an instance the monitor does not run (refused, or unknown)."""
        self._report(
            InstanceChanged(
                mgmt_mac=self.mgmt_mac,
                hostname=self.hostname,
                group=command.group,
                service=command.service,
                instance_id=command.instance_id,
                role=getattr(command, "role", None),
                fencing_token=getattr(command, "fencing_token", None),
                state=state,
                reason=reason,
                time=datetime.now(UTC),
                command=command_id or self._commands.get(command.instance_id),
            ),
            correlationid,
        )

    def _changed(
        self,
        assignment: InstanceAssign,
        state: str,
        reason: str,
        *,
        at: datetime,
        **extra: int | None,
    ) -> InstanceChanged:
        down = assignment.instance_id in self._down
        return InstanceChanged(
            mgmt_mac=self.mgmt_mac,
            hostname=self.hostname,
            group=assignment.group,
            service=assignment.service,
            instance_id=assignment.instance_id,
            role=self._role(assignment),
            fencing_token=None if down else assignment.fencing_token,
            state=state,
            reason=reason,
            time=at,
            command=self._commands.get(assignment.instance_id),
            **extra,
        )

    # Persistence -----------------------------------------------------------------------------

    def _load(self) -> dict[str, InstanceAssign]:
        try:
            document = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.exception("cannot read %s; starting no instances", self._path)
            return {}
        retired = document.get("retired") or {}
        self._retired = {k: v for k, v in retired.items() if isinstance(v, int)}
        commands = document.get("commands") or {}
        self._commands = {k: v for k, v in commands.items() if isinstance(v, str)}
        assigned = {}
        for entry in document.get("instances", []):
            try:
                assignment = InstanceAssign.model_validate(entry)
            except ValidationError:
                log.exception("skipping an unreadable assignment in %s", self._path)
                continue
            assigned[assignment.instance_id] = assignment
        return assigned

    def _save(self) -> None:
        document = {
            "instances": [a.model_dump(mode="json") for a in self._assigned.values()],
            "retired": self._retired,
            "commands": self._commands,
        }
        write_atomic(self._path, json.dumps(document, indent=2, sort_keys=True).encode())


def _same(new: InstanceAssign, current: InstanceAssign | None) -> bool:
    return current is not None and (new.role, new.fencing_token, new.spec) == (
        current.role,
        current.fencing_token,
        current.spec,
    )


def _change(old: InstanceAssign, new: InstanceAssign) -> str:
    """Why an instance is restarted, for the reports of its old process stopping."""
    parts = []
    if old.role != new.role:
        parts.append(f"role {old.role} -> {new.role}")
    if old.fencing_token != new.fencing_token:
        parts.append(f"token {old.fencing_token} -> {new.fencing_token}")
    if old.spec != new.spec:
        parts.append("new spec")
    return "reassigned: " + (", ".join(parts) or "restart")
