"""The deployment of one release across the fleet, and what each host's agent reports.

* ``software_deployment``: at most one document (``_id: "current"``): the release, the state
  (``deploying`` until every host it applies to runs it, then ``deployed``) and ``hosts``,
  hostname → that host's deploy state (pending/installing/installed/failed), the agent's detailed
  step (``agent_state``), its running version and the last command sent to it.
* ``software_hosts``: every host's latest ``agent.software.reported`` (keyed by hostname, or by
  MAC for an agent without one), whether or not a deployment is running.

Installing is a command to the host's agent (``software.install`` on ``roost.commands``, keyed
by its management MAC) written to the outbox in the transaction that marks the host
``installing``; the agent's reports move the host on (:meth:`DeployOps.reports_handler`, in the
consumer's transaction). A failed install raises alarm 900.021 for the host, cleared when it
installs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, BatchHandler, Delivery, Destined
from roost_shared.catalog import (
    AlarmClear,
    AlarmSet,
    AlarmType,
    Severity,
    SoftwareHostChanged,
    SoftwareInstall,
    SoftwareReported,
    SoftwareRollback,
)
from roost_shared.commands import agent_key, command
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.outbox import Outbox
from roost_shared.problems import Conflict, Invalid, NotFound, RoostError
from roost_shared.releases import version_key
from roost_software.peers import Peers, PeerUnavailable
from roost_software.release_models import (
    CheckResult,
    DeploymentView,
    HostDeployView,
    HostSoftwareView,
    PrecheckResult,
)
from roost_software.releases import SOURCE, ReleaseStore
from roost_software.settings import SoftwareSettings

DEPLOYMENT = "software_deployment"
HOSTS = "software_hosts"
CURRENT = "current"
REPORTS_QUEUE = "software.reports"
REPORTS_BINDINGS = ("agent.software.reported",)

INDEXES: dict[str, list[IndexModel]] = {
    DEPLOYMENT: [],
    HOSTS: [
        IndexModel([("hostname", ASCENDING)]),
        IndexModel([("mgmt_mac", ASCENDING)]),
    ],
}

#: Alarm 900.021: a host's install (or rollback) failed; entity ``host=<hostname>``.
HOST_FAILED = "900.021"
#: Host availabilities that cannot take an install.
UNREACHABLE = ("offline", "failed", "power-off")
#: Agent steps of an install in progress (the host is then ``installing``).
INSTALL_STEPS = ("downloading", "installing", "rebooting", "activating")


class DeployRefused(RoostError):
    """A deployment refused because prechecks failed (409, each failed check listed)."""

    status = 409

    def __init__(self, release_id: str, failed: list[CheckResult]) -> None:
        self.checks = failed
        words = "; ".join(
            f"{c.check}{f' ({c.host})' if c.host else ''}: {c.reason}" for c in failed
        )
        super().__init__(f"cannot deploy {release_id}: prechecks failed: {words}")


def _mac(mac: str | None) -> str | None:
    return mac.lower() if mac else None


def host_failed_alarm(hostname: str, release_id: str, reason: str) -> AlarmSet:
    return AlarmSet(
        alarm_id=HOST_FAILED,
        entity_instance_id=f"host={hostname}",
        entity_type_id="host",
        severity=Severity.major,
        reason_text=f"Software deploy of {release_id} failed on {hostname}: {reason}"[:2048],
        alarm_type=AlarmType.processing_error,
        probable_cause="software-program-error",
        proposed_repair_action=(
            f"Check the host's agent log; retry with 'POST /v1/deploy/hosts/{hostname}' or roll "
            "it back."
        ),
        mgmt_affecting=False,
        timestamp=utcnow_ms(),
    )


def host_failed_clear(hostname: str) -> AlarmClear:
    return AlarmClear(
        alarm_id=HOST_FAILED, entity_instance_id=f"host={hostname}", timestamp=utcnow_ms()
    )


def _no_mac(hostname: str) -> Conflict:
    return Conflict(
        kind="Host", id=hostname, reason="no management MAC known", field="path.hostname"
    )


class DeployOps:
    """Precheck, start, per-host install and rollback, agent reports, forget."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        releases: ReleaseStore,
        peers: Peers,
        settings: SoftwareSettings,
    ) -> None:
        self.db = db
        self.deployments = db[DEPLOYMENT]
        self.reports = db[HOSTS]
        self.outbox = outbox
        self.releases = releases
        self.peers = peers
        self.settings = settings
        self._lock = asyncio.Lock()

    # Reads -----------------------------------------------------------------------------------

    async def _current(self, session: Session | None = None) -> dict[str, Any] | None:
        return await self.deployments.find_one({"_id": CURRENT}, session=session)

    async def current(self) -> DeploymentView | None:
        doc = await self._current()
        return DeploymentView.of(doc) if doc is not None else None

    async def host_states(self, hostnames: list[str]) -> dict[str, HostDeployView | None]:
        """Each host's state in the current deployment (``None``: not part of one), from one
        read of the deployment. A strategy checks its stage's hosts on every agent report: a
        read of the whole deployment document per host held up the recording of the very
        reports it waited for."""
        doc = await self._current()
        hosts = doc["hosts"] if doc is not None else {}
        return {h: HostDeployView.of(hosts[h]) if h in hosts else None for h in hostnames}

    async def hosts(self) -> list[HostSoftwareView]:
        """Every host's last report (running release and version, agent state, boot, disk)."""
        docs = await self.reports.find({}).sort([("hostname", 1), ("mgmt_mac", 1)]).to_list()
        return [HostSoftwareView.of(d) for d in docs]

    async def report_of(
        self, hostname: str, mgmt_mac: str | None = None, session: Session | None = None
    ) -> dict[str, Any] | None:
        """A host's latest report, by hostname or (an agent that has none) MAC."""
        clauses: list[dict[str, Any]] = [{"hostname": hostname}]
        if mgmt_mac:
            clauses.append({"mgmt_mac": _mac(mgmt_mac)})
        docs = (
            await self.reports.find({"$or": clauses}, session=session)
            .sort([("time", -1)])
            .limit(1)
            .to_list()
        )
        return docs[0] if docs else None

    # Precheck --------------------------------------------------------------------------------

    async def _applicable(self, release: dict[str, Any]) -> dict[str, str]:
        """hostname → personality of every host config knows that the release applies to."""
        personalities = await self.peers.personalities()
        return {
            h: p for h, p in sorted(personalities.items()) if p in release.get("applies_to", [])
        }

    async def precheck(self, release_id: str, hostnames: list[str] | None = None) -> PrecheckResult:
        """Every check a deployment of ``release_id`` must pass, each named (and per host where
        it is about one); ``hostnames`` limits the per-host checks to those hosts."""
        release = await self.releases.get(release_id)
        checks: list[CheckResult] = []

        def add(check: str, ok: bool, reason: str = "", host: str | None = None) -> None:
            checks.append(CheckResult(check=check, host=host, ok=ok, reason=reason))

        current = await self._current()
        deploying_this = current is not None and current["release_id"] == release_id
        state = release["state"]
        if state == "available" or (state == "deploying" and deploying_this):
            add("release-state", True, f"release is {state}")
        else:
            add("release-state", False, f"release is {state}, not available")

        missing = []
        for required in release.get("requires", []):
            dep = await self.releases.find(required)
            if dep is None:
                missing.append(f"{required} (not uploaded)")
            elif dep["state"] != "deployed" and dep.get("deployed_at") is None:
                missing.append(f"{required} ({dep['state']})")
        if missing:
            add("dependencies", False, "not deployed: " + ", ".join(missing))
        else:
            add("dependencies", True, "every required release is deployed")

        deployed = await self.releases.deployed()
        if deployed is None:
            add("version", True, "no release deployed yet")
        elif version_key(release["version"]) > version_key(deployed["version"]):
            add("version", True, f"{release['version']} > deployed {deployed['version']}")
        else:
            add(
                "version",
                False,
                f"{release['version']} is not newer than the deployed "
                f"{deployed['id']} ({deployed['version']})",
            )

        applicable = await self._applicable(release)
        if hostnames is not None:
            applicable = {h: p for h, p in applicable.items() if h in hostnames}
        try:
            alarms = await self.peers.blocking_alarms(strict=False, hostnames=set(applicable))
        except PeerUnavailable as exc:
            add("alarms", False, str(exc))
        else:
            if alarms:
                add("alarms", False, "management-affecting alarms: " + ", ".join(alarms))
            else:
                add("alarms", True, "no management-affecting alarm")

        need_mb = (
            2 * -(-int(release["size"]) // (1024 * 1024)) + self.settings.precheck_disk_headroom_mb
        )
        # One list of every host, not one call per host (200 calls cost ~16 s at 200 hosts).
        try:
            views: dict[str, dict[str, Any]] | None = {
                h["hostname"]: h for h in await self.peers.hosts() if h.get("hostname")
            }
            unreachable = ""
        except PeerUnavailable as exc:
            views, unreachable = None, str(exc)
        for hostname in applicable:
            view = (views or {}).get(hostname)
            report = await self.report_of(hostname, (view or {}).get("mgmt_mac"))
            if views is None:
                add("reachable", False, unreachable, hostname)
            else:
                if view is None:
                    add("reachable", False, "the host service does not know it", hostname)
                elif view.get("availability") in UNREACHABLE:
                    add("reachable", False, f"host is {view['availability']}", hostname)
                elif report is None:
                    add("reachable", False, "its agent has not reported its software", hostname)
                else:
                    add("reachable", True, f"host is {view.get('availability')}", hostname)
            if report is None:
                add("disk", False, "no report of its free disk", hostname)
            elif report["disk_free_mb"] < need_mb:
                add(
                    "disk",
                    False,
                    f"{report['disk_free_mb']} MB free, {need_mb} MB needed",
                    hostname,
                )
            else:
                add("disk", True, f"{report['disk_free_mb']} MB free >= {need_mb} MB", hostname)
        return PrecheckResult(release=release_id, ok=all(c.ok for c in checks), checks=checks)

    # Deployment ------------------------------------------------------------------------------

    async def start(self, release_id: str) -> DeploymentView:
        """Start deploying ``release_id`` to every host it applies to (409 while another
        deployment runs, or listing the prechecks that fail). A finished (deployed) deployment
        is replaced. Hosts already running the version start ``installed``."""
        async with self._lock:
            current = await self._current()
            if current is not None and current["state"] != "deployed":
                raise Conflict(
                    kind="Deployment",
                    id=current["release_id"],
                    reason="it is in progress; one deployment at a time",
                    field="body.release",
                )
            result = await self.precheck(release_id)
            if not result.ok:
                raise DeployRefused(release_id, result.failed)
            release = await self.releases.get(release_id)
            applicable = await self._applicable(release)
            macs = {h["hostname"]: h.get("mgmt_mac") for h in await self.peers.hosts()}
            now = utcnow_ms()
            hosts: dict[str, dict[str, Any]] = {}
            for hostname, personality in applicable.items():
                report = await self.report_of(hostname, macs.get(hostname))
                running = (report or {}).get("running_version")
                installed = running == release["version"]
                hosts[hostname] = {
                    "hostname": hostname,
                    "personality": personality,
                    "mgmt_mac": _mac(macs.get(hostname) or (report or {}).get("mgmt_mac")),
                    "state": "installed" if installed else "pending",
                    "agent_state": (report or {}).get("state"),
                    "running_version": running,
                    "pending_reboot": bool((report or {}).get("pending_reboot")),
                    "rolling_back": False,
                    "reason": "already running it" if installed else "",
                    "command": None,
                    "updated_at": now,
                }
            doc = {
                "_id": CURRENT,
                "uuid": str(uuid.uuid4()),
                "release_id": release_id,
                "version": release["version"],
                "state": "deploying",
                "hosts": hosts,
                "started_at": now,
                "updated_at": now,
            }

            async def work(session: Session) -> None:
                await self.deployments.delete_one(
                    {"_id": CURRENT, "state": "deployed"}, session=session
                )
                await self.deployments.insert_one(doc, session=session)
                await self.releases.set_state(session, release_id, "deploying")
                events = [self._host_event(doc, h) for h in hosts.values()]
                await self.outbox.add(session, events)
                await self._maybe_deployed(session, doc)

            try:
                await self.db.in_transaction(work)
            except DuplicateKeyError:
                raise Conflict(
                    kind="Deployment",
                    id=release_id,
                    reason="another deployment started meanwhile",
                    field="body.release",
                ) from None
            self.outbox.wake()
            return DeploymentView.of(await self._current() or doc)

    async def _in_deployment(
        self, hostname: str, doc: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The current deployment (``doc`` if given, already read) and ``hostname``'s entry."""
        doc = doc if doc is not None else await self._current()
        if doc is None:
            raise Conflict(
                kind="Host",
                id=hostname,
                reason="no deployment is in progress (POST /v1/deploy first)",
                field="path.hostname",
            )
        host = doc["hosts"].get(hostname)
        if host is None:
            known = await self.peers.personalities()
            why = (
                f"its personality {known[hostname]} is not one the release applies to"
                if hostname in known
                else "config does not know it"
            )
            raise Invalid(
                field="path.hostname",
                field_name="hostname",
                reason=f"{hostname} is not part of the deployment of {doc['release_id']}: {why}",
            )
        return doc, host

    async def deploy_host(self, hostname: str, *, check_locked: bool = True) -> HostDeployView:
        """Install the release on one host (``software.install`` to its agent); the host must be
        part of the deployment (422) and, with ``check_locked``, locked (409). Idempotent: an
        installed host, or one installing, is left as it is -- unless its agent never answered
        the install command within the command's deadline (it was down; the command expired):
        then the command is sent again."""
        return (await self.deploy_hosts([hostname], check_locked=check_locked))[0]

    async def deploy_hosts(
        self, hostnames: list[str], *, check_locked: bool = True
    ) -> list[HostDeployView]:
        """:meth:`deploy_host` for several hosts at once (a strategy stage's): their views asked
        concurrently and every command recorded in one transaction. One host after another
        (each with its own reads, host-service call and transaction) put ~0.1 s between two
        hosts' commands, ~1 s for a stage of 10. All or nothing: a host refused refuses all."""
        async with self._lock:
            doc = await self._current()
            found = [await self._in_deployment(h, doc) for h in hostnames]
            views: dict[str, HostDeployView] = {}
            todo: list[dict[str, Any]] = []
            for _, host in found:
                if host["state"] == "installed" and not host.get("rolling_back"):
                    views[host["hostname"]] = HostDeployView.of(host)
                elif host["state"] == "installing" and not self._unanswered(host):
                    views[host["hostname"]] = HostDeployView.of(host)
                elif host.get("rolling_back"):
                    raise Conflict(
                        kind="Host",
                        id=host["hostname"],
                        reason="it is rolling back",
                        field="path.hostname",
                    )
                else:
                    todo.append(host)
            if todo:
                assert doc is not None  # _in_deployment raised otherwise
                peer_views = await asyncio.gather(*(self.peers.host(h["hostname"]) for h in todo))
                release = await self.releases.get(doc["release_id"])
                hooks = release.get("hooks") or {}
                payload = SoftwareInstall(
                    release_id=release["id"],
                    version=release["version"],
                    url=self.releases.download_url(release["id"]),
                    archive_sha256=release["archive_sha256"],
                    files=release["files"],
                    install_hook=hooks.get("install"),
                    activate_hook=hooks.get("activate"),
                    rollback_hook=hooks.get("rollback"),
                    reboot_required=bool(release.get("reboot_required")),
                )
                sends: list[tuple[dict[str, Any], Destined]] = []
                for host, view in zip(todo, peer_views, strict=True):
                    hostname = host["hostname"]
                    if view is None:
                        raise NotFound(kind="Host", id=hostname, field="path.hostname")
                    if check_locked and view.get("administrative") != "locked":
                        raise Conflict(
                            kind="Host",
                            id=hostname,
                            reason=f"it is {view.get('administrative')}: lock it first",
                            field="path.hostname",
                        )
                    mac = _mac(view.get("mgmt_mac") or host.get("mgmt_mac"))
                    if not mac:
                        raise _no_mac(hostname)
                    env = self._command(payload, hostname)
                    changed = {
                        **host,
                        "mgmt_mac": mac,
                        "state": "installing",
                        "reason": "",
                        "command": env.id,
                        "command_sent_at": utcnow_ms(),
                        "answered": False,
                        "updated_at": utcnow_ms(),
                    }
                    sends.append((changed, (env, COMMANDS_EXCHANGE, agent_key(mac))))
                for view in await self._send_all(doc, sends):
                    views[view.hostname] = view
            return [views[h] for h in hostnames]

    def _command(self, payload: SoftwareInstall | SoftwareRollback, hostname: str) -> Envelope:
        """A command to ``hostname``'s agent, expiring after ``command_deadline_s``."""
        deadline = self.settings.command_deadline_s
        return command(payload, source=SOURCE, subject=f"host={hostname}", deadline_s=deadline)

    def _unanswered(self, host: dict[str, Any]) -> bool:
        """The last command to the host had no answer and its deadline has passed."""
        sent = host.get("command_sent_at")
        if host.get("answered", True) or sent is None:
            return False
        return (utcnow_ms() - sent).total_seconds() > self.settings.command_deadline_s

    async def rollback_host(self, hostname: str) -> HostDeployView:
        """Run the release's rollback hook on one host (``software.rollback``); the release is
        ``removing`` while any host rolls back."""
        async with self._lock:
            doc, host = await self._in_deployment(hostname)
            if host.get("rolling_back"):
                return HostDeployView.of(host)
            if host["state"] == "pending":
                raise Conflict(
                    kind="Host",
                    id=hostname,
                    reason="the release was never installed on it",
                    field="path.hostname",
                )
            mac = _mac(host.get("mgmt_mac"))
            if not mac:
                view = await self.peers.host(hostname)
                mac = _mac((view or {}).get("mgmt_mac"))
            if not mac:
                raise _no_mac(hostname)
            release = await self.releases.get(doc["release_id"])
            payload = SoftwareRollback(
                release_id=release["id"], reboot_required=bool(release.get("reboot_required"))
            )
            env = self._command(payload, hostname)
            changed = {
                **host,
                "mgmt_mac": mac,
                "rolling_back": True,
                "reason": "rolling back",
                "command": env.id,
                "command_sent_at": utcnow_ms(),
                "answered": False,
                "updated_at": utcnow_ms(),
            }
            return await self._send(doc, changed, (env, COMMANDS_EXCHANGE, agent_key(mac)))

    async def _send(
        self, doc: dict[str, Any], host: dict[str, Any], cmd: Destined
    ) -> HostDeployView:
        return (await self._send_all(doc, [(host, cmd)]))[0]

    async def _send_all(
        self, doc: dict[str, Any], sends: list[tuple[dict[str, Any], Destined]]
    ) -> list[HostDeployView]:
        """Record each host's new state and its command in one transaction."""

        async def work(session: Session) -> None:
            fresh = await self._current(session)
            if fresh is None or fresh["uuid"] != doc["uuid"]:
                raise Conflict(
                    kind="Deployment", id=doc["release_id"], reason="it was forgotten meanwhile"
                )
            for host, cmd in sends:
                await self._save_host(session, fresh, host)
                await self.outbox.add_to(session, [cmd])

        await self.db.in_transaction(work)
        self.outbox.wake()
        return [HostDeployView.of(host) for host, _ in sends]

    async def forget(self) -> None:
        """Forget the deployment: only a finished one (deployed), or one where nothing was
        started yet (no command sent: its release becomes available again); else 409."""
        async with self._lock:
            doc = await self._current()
            if doc is None:
                return
            started = [h["hostname"] for h in doc["hosts"].values() if h.get("command")]
            if doc["state"] != "deployed" and started:
                raise Conflict(
                    kind="Deployment",
                    id=doc["release_id"],
                    reason=f"it is {doc['state']} and was started on {', '.join(started)}; "
                    "finish or roll it back first",
                )

            async def work(session: Session) -> None:
                await self.deployments.delete_one({"_id": CURRENT}, session=session)
                if doc["state"] != "deployed":
                    release = await self.releases.find(doc["release_id"], session)
                    if release is not None and release["state"] in ("deploying", "removing"):
                        await self.releases.set_state(session, doc["release_id"], "available")

            await self.db.in_transaction(work)
            self.outbox.wake()

    # State changes (in a caller's transaction) -----------------------------------------------

    def _host_event(self, doc: dict[str, Any], host: dict[str, Any]) -> Envelope:
        payload = SoftwareHostChanged(
            hostname=host["hostname"],
            release_id=doc["release_id"],
            state=host["state"],
            running_version=host.get("running_version"),
            reason=host.get("reason") or "",
        )
        return Envelope.of(payload, source=SOURCE, subject=f"host={host['hostname']}")

    async def _save_host(
        self,
        session: Session,
        doc: dict[str, Any],
        host: dict[str, Any],
        extra: list[Destined] | None = None,
    ) -> None:
        """Record one host's new state, its event (when its state, version or reason moved),
        then what follows for the deployment and its release."""
        hostname = host["hostname"]
        before = doc["hosts"].get(hostname, {})
        doc["hosts"][hostname] = host
        now = utcnow_ms()
        await self.deployments.update_one(
            {"_id": CURRENT},
            {"$set": {f"hosts.{hostname}": host, "updated_at": now}},
            session=session,
        )
        items: list[Destined] = list(extra or [])
        if any(before.get(k) != host.get(k) for k in ("state", "running_version", "reason")):
            items.append((self._host_event(doc, host), EVENTS_EXCHANGE, None))
        await self.outbox.add_to(session, items)
        if doc["state"] == "deployed" and any(
            h["state"] != "installed" or h.get("rolling_back") for h in doc["hosts"].values()
        ):
            # A host of a finished deployment is rolled back: the deployment is open again.
            doc["state"] = "deploying"
            await self.deployments.update_one(
                {"_id": CURRENT}, {"$set": {"state": "deploying"}}, session=session
            )
        rolling = any(h.get("rolling_back") for h in doc["hosts"].values())
        release = await self.releases.find(doc["release_id"], session)
        if release is not None:
            target = release["state"]
            if rolling:
                target = "removing"
            elif doc["state"] == "deploying" and release["state"] in ("removing", "deployed"):
                target = "deploying"
            if target != release["state"]:
                await self.releases.set_state(session, doc["release_id"], target)
        if not rolling:
            await self._maybe_deployed(session, doc)

    async def _maybe_deployed(self, session: Session, doc: dict[str, Any]) -> None:
        """Every host installed: the deployment and its release are deployed."""
        if doc["state"] == "deployed":
            return
        if not all(h["state"] == "installed" for h in doc["hosts"].values()):
            return
        doc["state"] = "deployed"
        await self.deployments.update_one(
            {"_id": CURRENT},
            {"$set": {"state": "deployed", "updated_at": utcnow_ms()}},
            session=session,
        )
        await self.releases.set_state(session, doc["release_id"], "deployed")

    # Agent reports ---------------------------------------------------------------------------

    def reports_handler(self) -> BatchHandler:
        """Record each ``agent.software.reported`` and move the deployment's host states."""

        async def handle(session: Session | None, deliveries: list[Delivery]) -> None:
            assert session is not None
            for d in deliveries:
                if isinstance(d.payload, SoftwareReported):
                    await self.record(session, d.payload)

        return handle

    async def record(self, session: Session, report: SoftwareReported) -> None:
        """One report: the host's latest (unless an older one), then its deploy state."""
        mac = _mac(report.mgmt_mac)
        key = report.hostname or f"mac:{mac}"
        latest = await self.reports.find_one({"_id": key}, session=session)
        if latest is not None and latest["time"] > report.time:
            return  # out of order: an older report than what is recorded
        fields = {
            "hostname": report.hostname,
            "mgmt_mac": mac,
            "boot_id": report.boot_id,
            "running_release": report.running_release,
            "running_version": report.running_version,
            "release_id": report.release_id,
            "state": report.state,
            "agent_state": report.state,
            "pending_reboot": report.pending_reboot,
            "error": report.error,
            "disk_free_mb": report.disk_free_mb,
            "command": report.command,
            "time": report.time,
        }
        await self.reports.replace_one({"_id": key}, fields, upsert=True, session=session)
        if report.hostname:
            # An agent that reported by MAC before it had a hostname: the hostname wins.
            await self.reports.delete_one({"_id": f"mac:{mac}"}, session=session)
        doc = await self._current(session)
        if doc is None:
            return
        host = None
        for h in doc["hosts"].values():
            if h["hostname"] == report.hostname or (mac and _mac(h.get("mgmt_mac")) == mac):
                host = h
                break
        if host is None:
            return
        new = self._next(doc, dict(host), report)
        if new == host:
            return
        extra: list[Destined] = []
        hostname = host["hostname"]
        if new["state"] == "failed" and host["state"] != "failed":
            alarm = host_failed_alarm(hostname, doc["release_id"], new["reason"])
            extra.append((Envelope.of(alarm, source=SOURCE), EVENTS_EXCHANGE, None))
            new["alarmed"] = True
        elif new["state"] in ("installed", "pending") and host.get("alarmed"):
            clear = host_failed_clear(hostname)
            extra.append((Envelope.of(clear, source=SOURCE), EVENTS_EXCHANGE, None))
            new["alarmed"] = False
        new["updated_at"] = utcnow_ms()
        await self._save_host(session, doc, new, extra)

    def _next(
        self, doc: dict[str, Any], host: dict[str, Any], report: SoftwareReported
    ) -> dict[str, Any]:
        """The host's deploy state after ``report``."""
        version = doc["version"]
        about_us = report.release_id in (None, doc["release_id"])
        # A report answering an older command than the last one sent is stale for the state.
        stale = bool(report.command and host.get("command") and report.command != host["command"])
        if report.command and report.command == host.get("command"):
            host["answered"] = True
        host["agent_state"] = report.state
        host["running_version"] = report.running_version
        host["pending_reboot"] = report.pending_reboot
        if stale:
            return host
        state = report.state
        if host.get("rolling_back"):
            if state == "rolled-back" and about_us:
                host.update(state="pending", rolling_back=False, reason="rolled back")
            elif state == "failed" and about_us:
                host.update(
                    state="failed",
                    rolling_back=False,
                    reason=f"rollback failed: {report.error or 'no reason given'}",
                )
            return host
        if state in ("installed", "idle") and report.running_version == version:
            if not report.pending_reboot:
                host.update(state="installed", reason="")
        elif state == "failed" and about_us and host["state"] in ("pending", "installing"):
            host.update(state="failed", reason=report.error or "the agent reported a failure")
        elif state in INSTALL_STEPS and about_us and host["state"] in ("pending", "failed"):
            host.update(state="installing", reason="")
        return host
