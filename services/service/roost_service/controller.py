"""The controller: places groups on hosts, grants activity, fails over, swacts.

One loop (:meth:`Controller.run`) reconciles every group when woken (a group declared, a host
learnt or changed, an agent report) and at least every ``ttl_s / 4`` (lease renewal). Decisions
are taken under one lock, so this process is the only writer of placements; each group's
decision ends in **one transaction**: its placement document (all instances), its state, and the
commands and alarms it causes (outbox).

Activity (``active-standby``): the ``active`` slot's lease (:mod:`roost_service.lease`) names
the active host and its fencing token. Only the lease holder is ever assigned ``active`` (with
that token). Each pass:

1. The holder's host is in service and no instance of it failed → **renew** (TTL ``ttl_s``).
2. Its instance **failed** (the agent gave up restarting) → **release** now and grant to the
   standby: the process is already stopped by its agent, so nothing waits for expiry.
3. Its **host** is not in service (failed, locked, ...) → **do not renew**; the standby is
   granted when the host service **confirms the host fenced** (``host.state.changed`` with
   reason ``recovery-fenced``: BMC power off read back) or, without that, only after the lease
   has **expired**. The old active's agent steps it down before the expiry when no grant
   reaches it (:mod:`roost_agent.instances`), so a partitioned old active never overlaps the
   new one even without a BMC.
4. No holder → acquire for the first member host (preferred order) in service whose instances
   are not failed; the other in-service host gets ``standby``.

Takeover after a host failure ≈ the host service's detection time + its fence (BMC power off
and read back) + one pass; without a BMC, detection + the lease's remaining TTL (≤ ``ttl_s``).

The leases held per host are published to the service link (:meth:`Controller.grants_for`,
:mod:`roost_service.link`), which hands them to the agents on every path.

Operator controls: a **disabled** group runs nothing (its lease released, its instances removed,
state ``disabled``); a **locked member** host is left out of placement (its instances removed; an
active there is switched away first, like a swact); ``restart`` sends the agent
``service.instance.restart`` for one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from roost_service import alarms
from roost_service.hosts import HostBook, describe, healthy
from roost_service.lease import Lease, LeaseStore
from roost_service.placement import agent_spec, instance_state, members, report_matches
from roost_service.placements import PlacementStore, instance_id
from roost_service.store import GroupStore
from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Destined
from roost_shared.catalog import (
    InstanceAssign,
    InstanceRemove,
    InstanceRestart,
    ServiceGroupChanged,
)
from roost_shared.commands import agent_key, command
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.outbox import Outbox
from roost_shared.problems import Conflict, Invalid, NotFound
from roost_shared.smlink import Lease as LinkLease

log = logging.getLogger(__name__)

SOURCE = "roost/service"
SLOT = "active"


@dataclass
class Decision:
    """What one pass wants for a group: role and token per host, and why if nothing runs."""

    desired: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    holder: str | None = None  # the first slot's holder (active-standby: the one)
    note: str = ""
    #: Active host -> the lease it holds (its slot, fencing token, expiry).
    holders: dict[str, Lease] = field(default_factory=dict)
    #: Host -> expiry of the lease released from it in this pass (its agent may hold the
    #: activity until then if it never hears of the release).
    released: dict[str, datetime | None] = field(default_factory=dict)


@dataclass
class Controller:
    db: Database
    groups: GroupStore
    placements: PlacementStore
    hosts: HostBook
    leases: LeaseStore
    outbox: Outbox
    ttl_s: float = 2.0
    deadline_s: float = 30.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # group -> [(holder host, its leases)]: what the service link grants (rebuilt every pass).
    _grants: dict[str, list[tuple[str, list[LinkLease]]]] = field(default_factory=dict)

    def grants_for(self, host: str) -> list[LinkLease]:
        """The activity leases ``host`` holds now (for the service link's grants)."""
        return [
            lease
            for holders in self._grants.values()
            for h, leases in holders
            if h == host
            for lease in leases
        ]

    def wake(self) -> None:
        """Ask for a pass soon (after a commit that changed what the controller reads)."""
        self._wake.set()

    async def run(self) -> None:
        """Reconcile every group until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service placement pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ttl_s / 4)

    async def reconcile_all(self) -> None:
        async with self._lock:
            declared = [d["name"] for d in await self.groups.groups.find({}, {"name": 1}).to_list()]
            for name in sorted(set(declared) | set(await self.placements.names())):
                await self._reconcile(name)

    async def swact(self, name: str) -> dict[str, Any]:
        """Planned switch of activity to the healthy standby; Conflict (409) without one."""
        async with self._lock:
            group = await self.groups.get(name)
            if group["redundancy"]["model"] != "active-standby":
                raise Conflict(
                    kind="Service group", id=name, reason="swact needs active-standby redundancy"
                )
            lease = await self.leases.current(name, SLOT)
            if lease is None or not lease.held_at(self.leases.clock()):
                raise Conflict(kind="Service group", id=name, reason="no instance is active")
            placement = await self.placements.find(name) or {"instances": []}
            hosts = await self.hosts.by_name()
            target = _healthy_standby(group, placement, hosts, exclude=lease.holder)
            if target is None:
                raise Conflict(
                    kind="Service group",
                    id=name,
                    reason="no healthy standby to switch to (every service of the group must "
                    "be enabled-standby on an in-service host)",
                )
            await self._reconcile(name, swact_to=target)
            return await self.placements.find(name) or {}

    async def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Enable or disable a group (a disabled group runs nothing); the group document."""
        return await self._admin(name, {"admin": "enabled" if enabled else "disabled"})

    async def set_member_locked(self, name: str, host: str, locked: bool) -> dict[str, Any]:
        """Lock (leave out of placement) or unlock one member host of a group."""
        async with self._lock:
            group = await self.groups.get(name)
            if host not in members(group, await self.hosts.by_name()):
                raise Invalid(
                    field="path.host",
                    field_name="host",
                    reason=f"{host} is not a member host of service group {name}",
                )
        op = "$addToSet" if locked else "$pull"
        return await self._admin(name, None, {op: {"locked_members": host}})

    async def _admin(
        self, name: str, fields: dict[str, Any] | None, update: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        async with self._lock:
            await self.groups.get(name)
            change = dict(update or {})
            if fields:
                change["$set"] = fields

            async def work(session: Session) -> None:
                await self.groups.groups.update_one({"name": name}, change, session=session)

            await self.db.in_transaction(work)  # fenced: only the leader changes controls
            await self._reconcile(name)
            return await self.groups.get(name)

    async def restart(self, name: str, service: str, host: str) -> dict[str, Any]:
        """Restart one instance in place (``service.instance.restart`` to its agent)."""
        async with self._lock:
            group = await self.groups.get(name)
            if service not in group["start_order"]:
                raise Invalid(
                    field="body.service",
                    field_name="service",
                    reason=f"service group {name} has no service {service!r}",
                )
            placement = await self.placements.find(name) or {"instances": []}
            iid = instance_id(name, service, host)
            inst = next((i for i in placement["instances"] if i["instance_id"] == iid), None)
            hosts = await self.hosts.by_name()
            if inst is None or not inst.get("role") or host not in hosts:
                raise NotFound(kind="Instance", id=iid, field="body.host")
            payload = InstanceRestart(group=name, service=service, instance_id=iid)
            env = command(
                payload, source=SOURCE, subject=_subject(inst), deadline_s=self.deadline_s
            )
            cmd: Destined = (env, COMMANDS_EXCHANGE, agent_key(hosts[host]["mgmt_mac"]))

            # Its reports will carry this command's id: what the controller last sent it.
            inst["command"] = env.id

            async def work(session: Session) -> None:
                await self.placements.save(session, placement)
                await self.outbox.add_to(session, [cmd])

            await self.db.in_transaction(work)
            self.outbox.wake()
            return {"instance_id": iid, "host": host, "service": service, "command": env.id}

    # -- one group --------------------------------------------------------------------------

    async def _reconcile(self, name: str, swact_to: str | None = None) -> None:
        # No grant for this group while its leases may change (a hello answered mid-pass must
        # not carry a lease this pass releases); republished at the end of the pass.
        self._grants.pop(name, None)
        group = await self.groups.find(name)
        placement = await self.placements.find(name) or {"_id": name, "instances": []}
        old = {i["instance_id"]: i for i in placement["instances"]}
        hosts = await self.hosts.by_name()
        now = utcnow_ms()
        if group is None:
            await self._forget(name, placement, hosts, now)
            return
        reports = await self.placements.reports_of(name)
        order = members(group, hosts)
        start = group["start_order"]
        locked = set(group.get("locked_members") or [])
        disabled = group.get("admin") == "disabled"
        in_service = [
            h for h in order if healthy(hosts.get(h)) and h not in locked and not disabled
        ]

        def current(h: str, svc: str) -> dict[str, Any]:
            iid = instance_id(name, svc, h)
            return dict(old.get(iid) or _blank(name, svc, h))

        def failed_on(h: str) -> bool:
            return any(
                instance_state(current(h, s), reports.get(instance_id(name, s, h)), hosts.get(h))[0]
                == "failed"
                for s in start
            )

        model = group["redundancy"]["model"]
        policy = group.get("failure_policy") or {}
        degrade = policy.get("on_exhausted") == "degrade"
        window_s = float(policy.get("window_s", 60.0))
        slots = list(group.get("slots") or [])
        if disabled:
            decision = await self._release(name, slots, "the group is disabled")
        elif model == "n":
            decision = Decision(desired={h: ("active", None) for h in in_service})
        else:
            standbys = 1 if model == "active-standby" else group["redundancy"].get("standby") or 0
            decision = await self._activity(
                name,
                slots,
                standbys,
                in_service,
                failed_on,
                old,
                swact_to,
                hosts,
                keep_on_failure=degrade,
            )

        services = {s["name"]: s for s in group["services"]}
        involved = order + sorted({i["host"] for i in old.values()} - set(order))

        # Go-standby before go-active (sm's order): a new holder's active assign waits while
        # another host may still run the activity: an old active whose step-down (standby
        # assign or remove) its agent has not acknowledged yet, until the released lease's
        # expiry (after which its agent has stepped down by itself), or one that reports an
        # active process. A fenced host is not waited for. The acknowledgment is a report
        # carrying the step-down command's id: after it, no grant can promote the old one.
        def demoted(h: str) -> bool:
            """Loses its active role in this pass."""
            return _runs(old, h, "active") and decision.desired.get(h, ("",))[0] != "active"

        still_active: set[str] = set()
        if model != "n":
            for h in involved:
                host = hosts.get(h)
                if h in decision.holders or (host or {}).get("fenced"):
                    continue
                mine = [current(h, svc) for svc in start]
                pending = demoted(h) and _still_held(decision.released.get(h), now)
                pending = pending or any(
                    _demoting(i, reports.get(i["instance_id"]), now) for i in mine
                )
                reported = healthy(host) and any(
                    (r := reports.get(i["instance_id"])) is not None
                    and r.get("role") == "active"
                    and r.get("state") not in ("stopped", "failed")
                    for i in mine
                )
                if pending or reported:
                    still_active.add(h)
        instances: list[dict[str, Any]] = []
        removes: list[Destined] = []
        standby_cmds: list[Destined] = []
        active_cmds: list[Destined] = []
        for h in involved:
            host = hosts.get(h)
            for svc in start:
                inst = current(h, svc)
                want = decision.desired.get(h)
                if want is not None and want[0] == "active" and still_active:
                    pass  # keep what it runs until the old active has stepped down
                elif want is not None and host is not None:
                    retry = _gave_up_long_ago(inst, reports.get(inst["instance_id"]), window_s)
                    if (
                        (inst.get("role"), inst.get("token")) != want
                        or inst["state"] == "initial"
                        or retry
                    ):
                        if inst.get("role") == "active" and want[0] != "active":
                            inst["demoting"] = {"until": decision.released.get(h)}
                        inst["role"], inst["token"] = want
                        inst["assigned_at"] = now
                        out = active_cmds if want[0] == "active" else standby_cmds
                        lease = decision.holders.get(h)
                        expires = lease.expires_at if lease and want[0] == "active" else None
                        cmd = self._assign(group, services[svc], inst, host, expires)
                        inst["command"] = cmd[0].id
                        out.append(cmd)
                elif inst.get("role") is not None:
                    if host is not None and host.get("availability") != "failed":
                        cmd = self._remove(inst, host)
                        inst["command"] = cmd[0].id
                        removes.append(cmd)
                        inst["state"] = "disabling"
                    if inst.get("role") == "active":
                        inst["demoting"] = {"until": decision.released.get(h)}
                    inst["role"], inst["token"] = None, None
                elif h not in order:
                    continue  # no longer a member and nothing runs there: forget it
                report = reports.get(inst["instance_id"])
                if inst.get("demoting") and not _demoting(inst, report, now):
                    inst.pop("demoting")  # acknowledged, or its lease is over
                inst["state"], inst["reason"] = instance_state(inst, report, host)
                if inst["state"] == "disabled" and inst.get("role") is None and h in order:
                    if h not in in_service:
                        inst["reason"] = describe(h, host)
                    elif not inst.get("reason") or inst["reason"] == "not placed on this host":
                        inst["reason"] = "not placed on this host (enough instances elsewhere)"
                inst["last_report"] = _brief(report)
                instances.append(inst)

        red = group["redundancy"]
        want = (len(slots), 1 if model == "active-standby" else red.get("standby") or 0)
        state, reason = _group_state(
            model, order, in_service, hosts, instances, start, decision, degrade, want
        )
        if disabled:
            state, reason = "disabled", "disabled by the operator"
        elif locked and state != "active":
            reason += f" (locked members: {', '.join(sorted(locked))})"
        self._publish_grants(name, start, decision)
        wanted = alarms.wanted(state)
        raised = set(placement.get("alarms", []))
        events: list[Envelope] = [
            Envelope.of(alarms.raise_(a, name, reason, now), source=SOURCE)
            for a in sorted(wanted - raised)
        ] + [
            Envelope.of(alarms.clear(a, name, now), source=SOURCE) for a in sorted(raised - wanted)
        ]
        if placement.get("state") != state:
            change = ServiceGroupChanged(
                name=name,
                from_state=placement.get("state"),
                to_state=state,
                reason=reason,
                active_hosts=sorted(decision.holders),
                time=now,
            )
            events.append(Envelope.of(change, source=SOURCE, subject=f"service-group={name}"))
        new = {
            "_id": name,
            "instances": instances,
            "alarms": sorted(wanted),
            "holder": decision.holder,
            "holders": sorted(decision.holders),
            "state": state,
            "state_reason": reason,
        }
        cmds = removes + standby_cmds + active_cmds
        unchanged = {k: placement.get(k) for k in new} == new
        if unchanged and not cmds and not events and group.get("state_reason") == reason:
            return

        async def work(session: Session) -> None:
            await self.placements.save(session, {**new, "updated_at": now})
            if group.get("state") != state or group.get("state_reason") != reason:
                await self.groups.groups.update_one(
                    {"name": name},
                    {"$set": {"state": state, "state_reason": reason}},
                    session=session,
                )
            await self.outbox.add_to(
                session, [*cmds, *((e, EVENTS_EXCHANGE, None) for e in events)]
            )

        await self.db.in_transaction(work)
        self.outbox.wake()

    async def _activity(
        self,
        name: str,
        slots: list[str],
        standbys: int,
        in_service: list[str],
        failed_on: Any,
        old: dict[str, dict[str, Any]],
        swact_to: str | None,
        hosts: dict[str, dict[str, Any]],
        keep_on_failure: bool = False,
    ) -> Decision:
        """The lease decision of an active-standby (one slot, one standby) or n-plus-m (N
        slots, M standbys) group; see the module docstring. One host holds at most one slot."""
        held: dict[str, Lease] = {}  # slot -> a lease still held (renewed, or waited out)
        excluded: set[str] = set()
        released: dict[str, datetime | None] = {}
        notes: list[str] = []
        for slot in slots:
            lease = await self.leases.current(name, slot)
            cur = lease if lease is not None and lease.held_at(self.leases.clock()) else None
            if cur is None:
                continue
            h = cur.holder or ""
            if swact_to is not None:
                await self.leases.release(name, slot, h, cur.token)
                excluded.add(h)
                released[h] = cur.expires_at
            elif h in in_service and (keep_on_failure or not failed_on(h)):
                renewed = await self.leases.renew(name, slot, h, cur.token, self.ttl_s)
                if renewed is not None:
                    held[slot] = renewed
            elif h in in_service:
                await self.leases.release(name, slot, h, cur.token)
                excluded.add(h)
                released[h] = cur.expires_at
            elif (hosts.get(h) or {}).get("fenced") or (
                healthy(hosts.get(h)) and h not in in_service
            ):
                # Fenced through its BMC (nothing runs there any more), or healthy but locked
                # out of the group / the group disabled (its agent is told to stop): no need to
                # wait for the expiry.
                await self.leases.release(name, slot, h, cur.token)
                excluded.add(h)
                released[h] = cur.expires_at
                log.warning("group %s: active host %s is out of the group; taking over", name, h)
            else:
                held[slot] = cur  # out of service, not fenced: this slot waits for the expiry
                notes.append(
                    f"active host {h} is out of service; a standby takes over when its activity "
                    f"lease (token {cur.token}) expires at {_clock(cur.expires_at)}"
                )
        busy = {lease.holder for lease in held.values()}
        if swact_to is not None:
            candidates = [swact_to]
        else:
            eligible = [h for h in in_service if h not in excluded | busy and not failed_on(h)]
            # A running standby takes over fastest; then member priority.
            ready = [h for h in eligible if _runs(old, h, "standby")]
            candidates = ready + [h for h in eligible if h not in ready]
        for slot in slots:
            if slot in held:
                continue
            for c in candidates:
                if c in busy:
                    continue
                got = await self.leases.acquire(name, slot, c, self.ttl_s)
                if got is not None:
                    held[slot] = got
                    busy.add(c)
                    break
            else:
                notes.append("no in-service member host can take the activity")
        desired: dict[str, tuple[str, int | None]] = {}
        holders: dict[str, Lease] = {}
        for slot in slots:
            lease = held.get(slot)
            if lease is not None and lease.holder in in_service:
                desired[lease.holder] = ("active", lease.token)
                holders[lease.holder] = lease
        others = [h for h in in_service if h not in desired]
        kept = [h for h in others if _runs(old, h)]
        for h in (kept + [o for o in others if o not in kept])[:standbys]:
            desired[h] = ("standby", None)
        first = next((held[s].holder for s in slots if s in held), None)
        return Decision(
            desired=desired,
            holder=first,
            note="; ".join(dict.fromkeys(notes)),
            holders=holders,
            released=released,
        )

    async def _release(self, name: str, slots: list[str], why: str) -> Decision:
        """Give the activity up (a disabled group)."""
        for slot in slots:
            lease = await self.leases.current(name, slot)
            if lease is not None and lease.held_at(self.leases.clock()):
                await self.leases.release(name, slot, lease.holder or "", lease.token)
        return Decision(note=why)

    def _publish_grants(self, name: str, start: list[str], decision: Decision) -> None:
        grants = []
        for host, lease in decision.holders.items():
            if lease.expires_at is None:
                continue
            expires_ms = int(lease.expires_at.replace(tzinfo=UTC).timestamp() * 1000)
            grants.append(
                (
                    host,
                    [
                        LinkLease(i=instance_id(name, s, host), k=lease.token, e=expires_ms)
                        for s in start
                    ],
                )
            )
        if grants:
            self._grants[name] = grants
        else:
            self._grants.pop(name, None)

    async def _forget(
        self, name: str, placement: dict[str, Any], hosts: dict[str, dict[str, Any]], now: datetime
    ) -> None:
        """A deleted group: remove its instances, clear its alarms, drop its placement."""
        self._grants.pop(name, None)
        cmds = [
            self._remove(i, hosts[i["host"]])
            for i in placement["instances"]
            if i.get("role") and hosts.get(i["host"])
        ]
        events = [
            Envelope.of(alarms.clear(a, name, now), source=SOURCE)
            for a in placement.get("alarms", [])
        ]

        async def work(session: Session) -> None:
            await self.placements.forget(session, name)
            await self.outbox.add_to(
                session, [*cmds, *((e, EVENTS_EXCHANGE, None) for e in events)]
            )

        await self.db.in_transaction(work)
        self.outbox.wake()

    def _assign(
        self,
        group: dict[str, Any],
        svc: dict[str, Any],
        inst: dict[str, Any],
        host: dict,
        lease_expires_at: datetime | None = None,
    ) -> Destined:
        spec = agent_spec(group, svc)
        if inst.get("token") is not None:
            spec["fencing_token"] = inst["token"]
        payload = InstanceAssign(
            group=group["name"],
            service=svc["name"],
            instance_id=inst["instance_id"],
            role=inst["role"],
            fencing_token=inst.get("token"),
            spec=spec,
            lease_expires_at=lease_expires_at.replace(tzinfo=UTC) if lease_expires_at else None,
        )
        env = command(payload, source=SOURCE, subject=_subject(inst), deadline_s=self.deadline_s)
        return env, COMMANDS_EXCHANGE, agent_key(host["mgmt_mac"])

    def _remove(self, inst: dict[str, Any], host: dict[str, Any]) -> Destined:
        payload = InstanceRemove(
            group=inst["group"], service=inst["service"], instance_id=inst["instance_id"]
        )
        env = command(payload, source=SOURCE, subject=_subject(inst), deadline_s=self.deadline_s)
        return env, COMMANDS_EXCHANGE, agent_key(host["mgmt_mac"])


def _subject(inst: dict[str, Any]) -> str:
    return f"service-group={inst['group']}"


def _blank(group: str, service: str, host: str) -> dict[str, Any]:
    return {
        "instance_id": instance_id(group, service, host),
        "group": group,
        "service": service,
        "host": host,
        "role": None,
        "token": None,
        "state": "initial",
        "reason": "",
        "assigned_at": None,
    }


def _brief(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    keys = ("state", "reason", "role", "fencing_token", "pid", "time")
    return {k: report.get(k) for k in keys}


def _clock(t: datetime | None) -> str:
    return t.strftime("%H:%M:%S.%f")[:-3] if t else "?"


def _healthy_standby(
    group: dict[str, Any],
    placement: dict[str, Any],
    hosts: dict[str, dict[str, Any]],
    exclude: str | None,
) -> str | None:
    """A host, other than ``exclude``, where every service is enabled-standby and in service."""
    services = set(group["start_order"])
    by_host: dict[str, set[str]] = {}
    for i in placement["instances"]:
        if i["state"] == "enabled-standby":
            by_host.setdefault(i["host"], set()).add(i["service"])
    for h in members(group, hosts):
        if h != exclude and by_host.get(h) == services and healthy(hosts.get(h)):
            return h
    return None


def _still_held(until: datetime | None, now: datetime) -> bool:
    """True while a released lease (expiring ``until``) may still be believed by its agent."""
    if until is None:
        return False
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return now < until


def _demoting(inst: dict[str, Any], report: dict[str, Any] | None, now: datetime) -> bool:
    """True while an old active's step-down is unacknowledged and its lease may still be held:
    no report carries the step-down command's id with a non-active state yet."""
    mark = inst.get("demoting")
    if not mark:
        return False
    acked = (
        report is not None
        and inst.get("command") is not None
        and report.get("command") == inst["command"]
        and (report.get("role") != "active" or report.get("state") in ("stopped", "failed"))
    )
    return not acked and _still_held(mark.get("until"), now)


def _runs(old: dict[str, dict[str, Any]], host: str, role: str | None = None) -> bool:
    """True if ``host`` has an instance of the group assigned (in ``role``, if given)."""
    return any(
        i["host"] == host and i.get("role") and (role is None or i["role"] == role)
        for i in old.values()
    )


def _gave_up_long_ago(inst: dict[str, Any], report: dict[str, Any] | None, window_s: float) -> bool:
    """True if the agent gave this assignment up (restarts exhausted) more than ``window_s``
    ago: time to start it again (a fresh restart budget)."""
    if inst.get("state") != "failed" or not report_matches(inst, report):
        return False
    assert report is not None
    when = report.get("time")
    if not isinstance(when, datetime):
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return (datetime.now(UTC) - when).total_seconds() > window_s


def _group_state(
    model: str,
    order: list[str],
    in_service: list[str],
    hosts: dict[str, dict[str, Any]],
    instances: list[dict[str, Any]],
    start: list[str],
    decision: Decision,
    degrade: bool = False,
    want: tuple[int, int] = (1, 1),
) -> tuple[str, str]:
    """(state, reason): active, degraded (active, short of standbys or of actives), go-active,
    failed. ``want`` is (N actives, M standbys) for active-standby and n-plus-m."""
    if not in_service:
        why = "; ".join(describe(h, hosts.get(h)) for h in order) or "no member hosts"
        return "failed", f"no member host is in service ({why})"

    def all_in(h: str, state: str) -> bool:
        mine = [i for i in instances if i["host"] == h]
        return len(mine) == len(start) and all(i["state"] == state for i in mine)

    active = [h for h in in_service if all_in(h, "enabled-active")]
    if model == "n":
        if active and len(active) == len(in_service) == len(order):
            return "active", ""
        if active:
            return "degraded", f"active on {len(active)} of {len(order)} member hosts"
        return "failed", "no member host runs the group yet"
    n, m = want
    standby = [h for h in in_service if all_in(h, "enabled-standby")]
    if len(active) >= n and len(standby) >= m:
        return "active", ""
    if len(active) >= n:
        on = ", ".join(active)
        if m == 1:
            return "degraded", f"active on {on}, no healthy standby"
        return "degraded", f"active on {on}, {len(standby)} of {m} standbys healthy"
    if active and n > 1:
        return "degraded", f"active on {len(active)} of {n} ({', '.join(active)})"
    holder = decision.holder
    mine = [i for i in instances if i["host"] == holder and i.get("role") == "active"]
    if degrade and any(i["state"] == "enabled-active" for i in mine):
        down = [i["service"] for i in mine if i["state"] == "failed"]
        if down:
            return "degraded", (
                f"active on {holder} without {', '.join(down)} (restarts exhausted; "
                "on_exhausted: degrade keeps the group here; retried after window_s)"
            )
    failed = [i for i in instances if i["state"] == "failed" and i.get("role")]
    if decision.holders and set(decision.holders) <= set(decision.desired) and not failed:
        return "go-active", f"starting the active instances on {', '.join(decision.holders)}"
    if failed:
        first = failed[0]
        return "failed", f"{first['service']} on {first['host']} failed: {first['reason']}"
    return "failed", decision.note or "no instance is active"
